"""Who the candidates of a season are, and why macro-F1 on them stays low (issue 19).

Runs ``--nights`` nights of the fast shell (default array, climate weather, greedy
follow-up) and, at each night's close, records the candidates the brain holds: their
class probabilities, detections, first and last sighting, nights seen, and the
simulator's truth; and which sources the catalogue held at the close of every night.
Then, for candidates seen on two nights or more from ``--from-night`` on, prints one JSON
object:

* per night: candidates, how many are *new* (first seen within the config's
  ``transients.new_days``, counted from the night's end) or *changed*
  (known longer), and how many of the new variables' sources the catalogue held more
  than three nights before (re-found artefacts would be; first sightings are not);
* pooled: macro-F1 (classes present in the truth, as ``metrics.json``), recall and
  precision per class, the confusion matrix;
* the same macro-F1 with the class priors corrected: with the truth's own class mix (an
  oracle: the most any prior correction could give) and with the rare classes (SLSN,
  TDE, KN, uLens) down-weighted.

    python -m experiments.season_candidates --nights 10 --out /tmp/season-candidates

It hooks the fast shell's night close (``brain.shells.fast._close_night``) to look, and
changes nothing the brain decides. ``--no-reference`` withholds the survey reference's
``ref_mag`` from the brain's detections (the same model, without that context);
``--reference-mag 0.5`` turns on the candidate rule ``transients.reference_mag``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

import brain.shells.fast as fast
from brain.cli.common import load_policy
from brain.cli.simulation import fresh_run_store
from brain.config import load_config
from brain.core.association import Associator
from brain.ops.survey_metrics import macro_f1
from observatory.sky import FieldGrid
from observatory.taxonomy import CLASSES, TRANSIENTS
from observatory.visibility import NightCache
from simulator.environment import make_environment

RARE = ("SLSN", "TDE", "KN", "uLens")


def run(nights: int, seed: int, start: str, out: Path, reference: bool = True,
        reference_mag: float | None = None) -> tuple[list[dict], np.ndarray]:
    config = load_config(None)
    config = config.model_copy(update={"transients": config.transients.model_copy(
        update={"reference_mag": reference_mag})})
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=nights + 1)
    env = make_environment(config, seed, start, nights, "climate", cache)
    records: list[dict] = []
    held: list[np.ndarray] = []
    close_night, assoc_close = fast._close_night, Associator.close_night

    def look(core, date, night, t0, n_cls0):
        r = close_night(core, date, night, t0, n_cls0)
        a = core.associator
        rows = a.rows_of(r.cand_ids)
        records.append({"date": date, "truth": r.cand_truth, "pred": r.cand_pred,
                        "nights": r.cand_nights, "prob": a.prob[rows].astype(np.float32),
                        "n_det": a.n_detections()[rows], "first": a.first_mjd[rows].copy(),
                        "last": a.last_mjd[rows].copy()})
        return r

    def held_sources(self, now_mjd):
        held.append(np.unique(self.truth[:self.n_objects]))
        return assoc_close(self, now_mjd)

    detect = fast._detect

    def without_reference(photometry, finished, t_minute):
        batch = detect(photometry, finished, t_minute)
        batch.ref_mag = None
        return batch

    fast._close_night, Associator.close_night = look, held_sources
    if not reference:
        fast._detect = without_reference
    store = fresh_run_store(out)
    try:
        result = fast.simulate(config, env, cache=cache, store=store,
                               policy=load_policy("greedy", seed))
    finally:
        fast._close_night, Associator.close_night = close_night, assoc_close
        fast._detect = detect
        store.close()
    for k, rec in enumerate(records):
        rec["held_before"] = (np.unique(np.concatenate(held[:k - 3])) if k > 3
                              else np.zeros(0, dtype=np.int64))
    return records, result.env.population.cls


def analyse(records: list[dict], cls: np.ndarray, from_night: int,
            new_days: float = 3.0) -> dict:
    names = np.asarray(CLASSES)
    nights, ys, probs, preds = [], [], [], []
    for k, rec in enumerate(records):
        two = (rec["truth"] >= 0) & (rec["nights"] >= 2)
        y = cls[np.maximum(rec["truth"], 0)]
        transient = np.isin(names[y], TRANSIENTS)
        now = float(rec["last"].max()) if rec["last"].size else 0.0
        # New as the brain counts it (first seen within new_days), as of the night's end
        # (``now`` is its last detection, about half a day before the next night).
        new = two & (rec["first"] >= now - new_days - 0.5)
        seen = np.isin(rec["truth"], rec["held_before"])
        nights.append({
            "date": rec["date"], "candidates": int(rec["truth"].size),
            "seen_two_nights": int(two.sum()), "new": int(new.sum()),
            "changed": int((two & ~new).sum()),
            "new_variables": int((new & ~transient).sum()),
            "new_variables_held_3_nights_before": int((new & ~transient & seen).sum()),
            "new_transients": int((new & transient).sum()),
            "median_detections_new_variables": (float(np.median(rec["n_det"][new & ~transient]))
                                                if (new & ~transient).any() else None),
            "macro_f1_two_nights": macro_f1(y[two], rec["pred"][two]) if two.any() else None})
        if k >= from_night and two.any():
            ys.append(y[two])
            probs.append(rec["prob"][two].astype(np.float64))
            preds.append(rec["pred"][two])
    if not ys:
        return {"nights": nights}
    y, prob, pred = np.concatenate(ys), np.concatenate(probs), np.concatenate(preds)
    labels = np.unique(np.concatenate([y, pred]))
    per_class = {}
    for c in labels:
        t, p = int((y == c).sum()), int((pred == c).sum())
        tp = int(((y == c) & (pred == c)).sum())
        per_class[CLASSES[c]] = {"true": t, "predicted": p,
                                 "recall": tp / t if t else None,
                                 "precision": tp / p if p else None}
    mix = np.bincount(y, minlength=len(CLASSES)) / y.size
    rare = np.ones(len(CLASSES))
    rare[[CLASSES.index(c) for c in RARE]] = 0.03
    return {"nights": nights, "from_night": from_night, "pooled": int(y.size),
            "macro_f1": macro_f1(y, pred),
            "macro_f1_oracle_prior": macro_f1(y, (prob * (mix + 1e-3)).argmax(axis=1)),
            "macro_f1_rare_classes_x0.03": macro_f1(y, (prob * rare).argmax(axis=1)),
            "class_mix": {CLASSES[c]: round(float(mix[c]), 3) for c in np.unique(y)},
            "per_class": per_class,
            "confusion_labels": [CLASSES[c] for c in labels],
            "confusion": confusion_matrix(y, pred, labels=labels).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--start", default="2026-12-15")
    ap.add_argument("--from-night", type=int, default=7, help="first night pooled (0-based)")
    ap.add_argument("--out", default="out/season-candidates", help="the run's store")
    ap.add_argument("--no-reference", action="store_true",
                    help="withhold the reference (ref_mag) from the brain")
    ap.add_argument("--reference-mag", type=float, default=None,
                    help="transients.reference_mag: a new object within this of its "
                         "reference source is no candidate (default: off)")
    args = ap.parse_args()
    records, cls = run(args.nights, args.seed, args.start, Path(args.out),
                       reference=not args.no_reference, reference_mag=args.reference_mag)
    new_days = load_config(None).transients.new_days
    print(json.dumps(analyse(records, cls, args.from_night, new_days), indent=1))


if __name__ == "__main__":
    main()
