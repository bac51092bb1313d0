"""The season's new candidates are two or three nights old: does a classifier trained on
light curves cut to their first 2-4 nights call them better? (issue 19, macro-F1 of the
candidates seen on two nights or more).

Three steps::

    python -m experiments.early_candidates train --early 0.3 --out out/clf-early
    python -m experiments.early_candidates score out/season/store.sqlite \\
        policies/artifacts/classifier out/clf-early
    python -m experiments.early_candidates ceiling out/season/store.sqlite

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
``transients.reference_mag`` = X would (docs/season.md); ``--priors`` also scores each
model moved to each night's class mix (estimated, and the truth). ``ceiling`` asks how
far any model of the classifier's features could go on these candidates: one trained
on the candidates themselves, cross-validated by object (:func:`ceiling`). A night ends
at 06:00 UTC, after the last of the three default sites' dawns.
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
from policies.classifier import TransientClassifier, model_features
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


def nightly_candidates(store_url: str, nights: int, seed: int, start: str, from_night: int,
                       reference_mag: float | None):
    """For each night from ``from_night`` on: ``(night, object_ids, true classes, args)``
    of the new candidates seen on two nights or more at the night's end, ``args`` being
    :meth:`TransientClassifier.predict`'s arguments (light curves cut at that time)."""
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
        radec = np.stack([cat["ra_deg"][cand], cat["dec_deg"][cand]], axis=1)
        ref = cat["ref"][cand].astype(np.float64)
        yield n, cat["object_id"][cand], cls[cat["truth"][cand]], (
            local, mjd[upto][keep], band[upto][keep], mag[upto][keep], err[upto][keep],
            cand.size, radec, ref)


def _summary(nightly: list[dict], y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import f1_score  # lazy: heavy optional library

    f1 = [x["macro_f1"] for x in nightly if x["macro_f1"] is not None]
    labels = np.unique(y)
    per = f1_score(y, p, labels=labels, average=None)
    return {"nightly": nightly, "median_macro_f1": float(np.median(f1)),
            "pooled_macro_f1": round(macro_f1(y, p), 3),
            "recall": {CLASSES[k]: {"true": int((y == k).sum()),
                                    "predicted": int((p == k).sum()),
                                    "recall": round(float((p[y == k] == k).mean()), 3),
                                    "f1": round(float(f), 3)}
                       for k, f in zip(labels, per, strict=True)}}


def sky_prior_em(prob: np.ndarray, iterations: int = 200) -> np.ndarray:
    """The class mix of a set of objects estimated from a classifier's probabilities alone
    (expectation-maximisation, Saerens, Latinne & Decaestecker 2002), for a classifier
    trained on balanced classes."""
    prior = np.full(prob.shape[1], 1.0 / prob.shape[1])
    for _ in range(iterations):
        post = prob * prior
        post /= post.sum(axis=1, keepdims=True)
        new = post.mean(axis=0)
        if np.abs(new - prior).max() < 1e-6:
            return new
        prior = new
    return prior


def with_prior(prob: np.ndarray, prior: np.ndarray) -> np.ndarray:
    post = prob * prior
    return post / post.sum(axis=1, keepdims=True)


def score(store_url: str, models: list[str], nights: int, seed: int, start: str,
          from_night: int, reference_mag: float | None, priors: bool = False) -> dict:
    """Per model (and, with ``priors``, per model with its probabilities moved to each
    night's class mix, estimated by :func:`sky_prior_em` or, as an oracle, the truth)."""
    clfs = {m: TransientClassifier.load(Path(m)) for m in models}
    names = [f"{m}{v}" for m in models for v in (("", " +EM prior", " +true prior")
                                                  if priors else ("",))]
    nightly: dict[str, list] = {m: [] for m in names}
    pooled: dict[str, tuple[list, list]] = {m: ([], []) for m in names}
    for n, _ids, y, args in nightly_candidates(store_url, nights, seed, start, from_night,
                                               reference_mag):
        for m, clf in clfs.items():
            prob = clf.predict(*args)
            preds = {m: prob.argmax(axis=1)}
            if priors and y.size:
                truth = np.bincount(y, minlength=len(CLASSES)) / y.size
                preds[f"{m} +EM prior"] = with_prior(prob, sky_prior_em(prob)).argmax(axis=1)
                preds[f"{m} +true prior"] = with_prior(prob, truth).argmax(axis=1)
            for name, pred in preds.items():
                nightly[name].append({"night": n, "candidates": int(y.size), "macro_f1":
                                      round(macro_f1(y, pred), 3) if y.size else None})
                pooled[name][0].append(y)
                pooled[name][1].append(pred)
    return {m: _summary(nightly[m], np.concatenate(pooled[m][0]),
                        np.concatenate(pooled[m][1])) for m in names}


def ceiling(store_url: str, nights: int, seed: int, start: str, from_night: int,
            reference_mag: float | None, folds: int = 5, with_model: str | None = None) -> dict:
    """How well could any model of these features call these candidates? Gradient
    boosting trained on the candidates themselves (every night from night 3, classes
    weighted to balance, ``folds``-fold cross-validation grouped by object so that no
    object is in training and test), scored like :func:`score` from ``from_night``;
    ``with_model``: that classifier's probabilities are features too."""
    import lightgbm  # lazy: heavy optional library
    from sklearn.model_selection import GroupKFold  # lazy: heavy optional library

    clf = TransientClassifier.load(Path(with_model)) if with_model else None

    def features(args) -> np.ndarray:
        x = model_features(*args)
        return np.hstack([x, clf.predict_features(x)]) if clf is not None else x

    rows = [(n, ids, y, features(args)) for n, ids, y, args in
            nightly_candidates(store_url, nights, seed, start, 3, reference_mag)]
    night = np.concatenate([np.full(y.size, n) for n, _i, y, _x in rows])
    ids = np.concatenate([i for _n, i, _y, _x in rows])
    y = np.concatenate([y for _n, _i, y, _x in rows])
    x = np.vstack([x for _n, _i, _y, x in rows])
    pred = np.zeros(y.size, np.int64)
    for train_rows, test_rows in GroupKFold(folds).split(x, y, ids):
        count = np.bincount(y[train_rows], minlength=len(CLASSES)).astype(float)
        weight = (train_rows.size / len(CLASSES) / np.maximum(count, 1))[y[train_rows]]
        model = lightgbm.LGBMClassifier(n_estimators=300, learning_rate=0.05,
                                        min_child_samples=10, n_jobs=2, random_state=seed,
                                        verbose=-1)
        model.fit(x[train_rows], y[train_rows], sample_weight=weight)
        prob = np.zeros((test_rows.size, len(CLASSES)))
        prob[:, model.classes_] = model.predict_proba(x[test_rows])
        pred[test_rows] = prob.argmax(axis=1)
    late = night >= from_night
    nightly = [{"night": int(n), "candidates": int((night == n).sum()),
                "macro_f1": round(macro_f1(y[night == n], pred[night == n]), 3)}
               for n in np.unique(night[late])]
    return {"rows": int(y.size), "folds": folds, **_summary(nightly, y[late], pred[late])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    t = sub.add_parser("train")
    t.add_argument("--early", type=float, default=0.3)
    t.add_argument("--out", required=True)
    s = sub.add_parser("score")
    c = sub.add_parser("ceiling")
    for step in (s, c):  # the season whose store is read (remade from these)
        step.add_argument("store")
        if step is s:
            step.add_argument("models", nargs="+")
        step.add_argument("--nights", type=int, default=20)
        step.add_argument("--seed", type=int, default=5)
        step.add_argument("--start", default="2026-12-15")
        step.add_argument("--from-night", type=int, default=7)
        step.add_argument("--reference-mag", type=float, default=None)
    s.add_argument("--priors", action="store_true",
                   help="also each model with each night's class mix (EM; the truth)")
    c.add_argument("--with-model", metavar="DIR", default=None,
                   help="also give the model this classifier's probabilities")
    args = ap.parse_args()
    if args.step == "train":
        _model, report = train(out_dir=Path(args.out), progress=True,
                               early_fraction=args.early)
        print(json.dumps({"artifact": args.out, "early_fraction": args.early,
                          "rounds": report["rounds"]}))
        return
    if args.step == "ceiling":
        print(json.dumps(ceiling(args.store, args.nights, args.seed, args.start,
                                 args.from_night, args.reference_mag,
                                 with_model=args.with_model), indent=1))
        return
    print(json.dumps(score(args.store, args.models, args.nights, args.seed, args.start,
                           args.from_night, args.reference_mag, args.priors), indent=1))


if __name__ == "__main__":
    main()
