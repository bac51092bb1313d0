"""The season's new candidates are two or three nights old: does a classifier trained on
light curves cut to their first 2-4 nights call them better? (issue 19, macro-F1 of the
candidates seen on two nights or more).

Two steps::

    python -m experiments.early_candidates train --early 0.3 --out out/clf-early
    python -m experiments.early_candidates score out/season/store.sqlite \\
        policies/artifacts/classifier out/clf-early

``train`` is ``brain train classifier`` (the shipped recipe, 40 min on 2 cores) with
``early_fraction`` of the training and validation light curves cut to their first 2-4
nights (``policies.lightcurve_sets.make_set``). ``score`` reads a season's object store
(``brain simulate --nights N --seed S --start D``, or ``experiments.season_candidates``
with the same arguments: the population, and so each object's true class, is remade
from them) and, at the end of each night from ``--from-night`` on, takes the objects the
brain would call new (first seen within ``transients.new_days`` + 0.5 d) with three or
more detections on two or more nights, cuts their light curves (with position and the
survey's reference) at that time, classifies them with each model and prints, per model,
the nightly macro-F1 against the truth, the pooled macro-F1 and each class's recall.
``--reference-mag X`` leaves out the objects the candidate rule
``transients.reference_mag`` = X would (docs/season.md). A night ends at 06:00 UTC, after
the last of the three default sites' dawns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from astropy.time import Time

from brain.config import load_config
from brain.core.store import open_store
from brain.ops.survey_metrics import macro_f1
from observatory.sky import FieldGrid
from observatory.taxonomy import CLASSES
from observatory.visibility import NightCache
from policies.classifier import TransientClassifier
from policies.classifier_training import train
from simulator.environment import make_environment

NIGHT_END = 1.25  # days after a night's date (0h UTC): 06:00 UTC the next day


def reference_quiet(cat, row, band, mag, err, size: int, within: float) -> np.ndarray:
    """Per catalogue row: every detection within ``within`` + 3 errors of the reference's
    source there (the ``transients.reference_mag`` rule; unknown bands compare nothing)."""
    ref = cat["ref"][row, band].astype(np.float64)
    known = ~np.isnan(ref)
    with np.errstate(invalid="ignore"):
        dev = np.where(np.isinf(ref), np.inf, np.abs(mag - ref) - 3 * err)
    worst = np.full(size, -np.inf)
    np.maximum.at(worst, row[known], dev[known])
    has = np.zeros(size, bool)
    has[row[known]] = True
    return has & (worst <= within)


def score(store_url: str, models: list[str], nights: int, seed: int, start: str,
          from_night: int, reference_mag: float | None) -> dict:
    config = load_config(None)
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    env = make_environment(config, seed, start, nights, "climate", NightCache(config, grid,
                                                                             keep=2))
    cls = env.population.cls
    store = open_store(store_url if "://" in store_url else f"sqlite:///{store_url}")
    cat = store.objects()
    cat = cat[(cat["n_nights"] >= 2) & (cat["truth"] >= 0) & (cat["n_det"] >= 3)]
    obj, mjd, band, mag, err = store.light_curves(cat["object_id"])
    store.close()
    row = np.searchsorted(cat["object_id"], obj)
    mjd0 = Time(start).mjd
    new_days = config.transients.new_days + 0.5
    clfs = {m: TransientClassifier.load(Path(m)) for m in models}
    nightly: dict[str, list] = {m: [] for m in models}
    pooled: dict[str, tuple[list, list]] = {m: ([], []) for m in models}
    for n in range(from_night, nights):
        end = mjd0 + n + NIGHT_END
        first = cat["first_mjd"]
        upto = ((first >= end - new_days) & (first < end))[row] & (mjd < end)
        r = row[upto]
        n_det = np.bincount(r, minlength=cat.size)
        night_keys = np.unique(r * 100_000 + np.floor(mjd[upto] - 0.25).astype(np.int64)
                               - int(mjd0))
        n_nights = np.bincount(night_keys // 100_000, minlength=cat.size)
        cand = np.flatnonzero((n_det >= 3) & (n_nights >= 2))
        if reference_mag is not None:
            quiet = reference_quiet(cat, r, band[upto], mag[upto], err[upto], cat.size,
                                    reference_mag)
            cand = cand[~quiet[cand]]
        keep = np.isin(r, cand)
        local = np.searchsorted(cand, r[keep])
        y = cls[cat["truth"][cand]]
        radec = np.stack([cat["ra_deg"][cand], cat["dec_deg"][cand]], axis=1)
        ref = cat["ref"][cand].astype(np.float64)
        for m, clf in clfs.items():
            pred = clf.predict(local, mjd[upto][keep], band[upto][keep], mag[upto][keep],
                               err[upto][keep], cand.size, radec, ref).argmax(axis=1)
            nightly[m].append({"night": n, "candidates": int(cand.size),
                               "macro_f1": round(macro_f1(y, pred), 3) if cand.size else None})
            pooled[m][0].append(y)
            pooled[m][1].append(pred)
    out = {}
    for m in models:
        y, p = np.concatenate(pooled[m][0]), np.concatenate(pooled[m][1])
        f1 = [x["macro_f1"] for x in nightly[m] if x["macro_f1"] is not None]
        out[m] = {"nightly": nightly[m], "median_macro_f1": float(np.median(f1)),
                  "pooled_macro_f1": round(macro_f1(y, p), 3),
                  "recall": {CLASSES[k]: {"true": int((y == k).sum()),
                                          "predicted": int((p == k).sum()),
                                          "recall": round(float((p[y == k] == k).mean()), 3)}
                             for k in np.unique(y)}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train")
    t.add_argument("--early", type=float, default=0.3)
    t.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("store")
    s.add_argument("models", nargs="+")
    s.add_argument("--nights", type=int, default=20)
    s.add_argument("--seed", type=int, default=5)
    s.add_argument("--start", default="2026-12-15")
    s.add_argument("--from-night", type=int, default=7)
    s.add_argument("--reference-mag", type=float, default=None)
    args = ap.parse_args()
    if args.step == "train":
        _model, report = train(out_dir=Path(args.out), progress=True,
                               early_fraction=args.early)
        print(json.dumps({"artifact": args.out, "early_fraction": args.early,
                          "rounds": report["rounds"]}))
        return
    print(json.dumps(score(args.store, args.models, args.nights, args.seed, args.start,
                           args.from_night, args.reference_mag), indent=1))


if __name__ == "__main__":
    main()
