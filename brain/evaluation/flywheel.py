"""The data flywheel, measured: does a week of spectroscopic labels make the classifier
better, and which follow-up policy's labels help most?

Labels come from simulated runs (``brain simulate --nights 7 --policy P``): each run's
``labelled.csv`` holds the light curves of the objects that got a spectrum, with the
spectrum's class. Policies take different numbers of spectra, so every policy's labels
are cut to the same count, the first ``k`` by time (``equal_labels``).

How labels enter training is chosen by measurement (``docs/classifier.md``):

* the labelled light curves join the simulated training set, each counting
  ``LABEL_WEIGHT`` simulated light curves of its class, taken from that class's weight
  (``policies.classifier_training.label_weights``: labels change what a class looks like,
  not how common it is), each also cut to its first night and to a few windows a few
  days long (``label_views``: what the classifier meets), and the model is trained
  again from scratch;
* the model is scored with no labels and with each policy's labels on the same test
  sets: held-out simulated sets (ours, redback) and a held-out *sky*: the candidates of
  another simulated run, full light curves and first nights, against the simulator's
  truth (``sky_set``). The sky is where the labels come from, so it is where they can
  teach most (the crowding, blends, cadence and depth of the survey itself).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from brain.core.store import open_store
from observatory.taxonomy import CLASSES
from policies.classifier_training import GENERATORS, fit, fit_inputs, generator_sets
from policies.generalisation import concat, score, test_set
from policies.lightcurve_io import LabelledSet, read_labelled
from policies.lightcurve_sets import LightCurveSet
from policies.realdata import FIRST_NIGHT_D  # a first night: within this of the first (d)

LABEL_WEIGHT = 5.0


def equal_labels(runs: dict[str, Path]) -> tuple[dict[str, LabelledSet], int]:
    """Each policy's labels cut to the first ``k`` spectra by time, ``k`` the smallest
    count among the runs; returns ({policy: labels}, k)."""
    firsts = {}
    for name, run in runs.items():
        with (Path(run) / "followups.csv").open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["label"]]
        rows.sort(key=lambda r: float(r["t_start"]))
        firsts[name] = list(dict.fromkeys(r["object_id"] for r in rows))
    k = min(len(v) for v in firsts.values())
    out = {}
    for name, run in runs.items():
        full = read_labelled([Path(run) / "labelled.csv"])
        ids = _labelled_ids(Path(run) / "labelled.csv")
        keep = np.isin(ids, firsts[name][:k])
        out[name] = _subset(full, keep)
    return out, k


def _labelled_ids(path: Path) -> np.ndarray:
    """Object ids of a labelled.csv in the order ``read_labelled`` numbers them."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return np.unique([r["object_id"].strip() for r in csv.DictReader(fh)])


def _subset(s: LabelledSet, keep: np.ndarray) -> LabelledSet:
    new = np.cumsum(keep) - 1
    rows = keep[s.obj]
    return LabelledSet(new[s.obj[rows]], s.mjd[rows], s.band[rows], s.mag[rows], s.err[rows],
                       s.label[keep])


def sky_set(run_dir: Path, per_class: int = 300, seed: int = 0,
            min_detections: int = 3) -> LightCurveSet:
    """A simulated run's real sources (not bogus), up to ``per_class`` of each true
    class, with their whole light curves from the run's store, plus the first night of
    each (``FIRST_NIGHT_D``) that has ``min_detections`` detections."""
    run_dir = Path(run_dir)
    with (run_dir / "objects.csv").open(newline="") as fh:
        rows = [(int(r["object_id"][1:]), CLASSES.index(r["true_class"]))
                for r in csv.DictReader(fh) if r["true_class"] in CLASSES]
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    cls = np.array([r[1] for r in rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([rng.permutation(np.flatnonzero(cls == k))[:per_class]
                           for k in range(len(CLASSES))])
    store = open_store(f"sqlite:///{run_dir / 'store.sqlite'}")
    try:
        obj, mjd, band, mag, err = store.light_curves(ids[pick])
    finally:
        store.close()
    label_of = dict(zip(ids[pick].tolist(), cls[pick].tolist(), strict=True))
    uid, local = np.unique(obj, return_inverse=True)
    counts = np.bincount(local, minlength=uid.size)
    good = counts >= min_detections
    full = _renumber(local, mjd, band, mag, err, good, uid, label_of, False)
    t0 = np.full(uid.size, np.inf)
    np.minimum.at(t0, local, mjd)
    early = mjd - t0[local] < FIRST_NIGHT_D
    n_early = np.bincount(local[early], minlength=uid.size)
    sel = early
    first = _renumber(local[sel], mjd[sel], band[sel], mag[sel], err[sel],
                      n_early >= min_detections, uid, label_of, True)
    return concat([full, first])


def _renumber(local, mjd, band, mag, err, good, uid, label_of, first: bool) -> LightCurveSet:
    keep = good[local]
    kept = np.flatnonzero(good)
    new = np.searchsorted(kept, local[keep])
    labels = np.array([label_of[int(u)] for u in uid[kept]], dtype=np.int64)
    return LightCurveSet(new, mjd[keep], band[keep], mag[keep], err[keep], labels,
                         np.full(kept.size, first))


def run_flywheel(runs: dict[str, Path], sky: Path | None = None, n_per_class: int = 2000,
                 seed: int = 1, valid_seed: int = 2, test_per_class: int = 400,
                 weights=(LABEL_WEIGHT,), generators=GENERATORS, fit_seeds=None,
                 view_options: dict | None = None, share_cap: float | None = None) -> dict:
    """Macro-F1 with no labels and with each run's labels (cut to equal counts), for each
    label weight, on held-out simulated sets and the held-out ``sky`` run.

    ``fit_seeds``: LightGBM seeds (bagging, feature sampling); each model is trained once
    per seed on the same light curves and its macro-F1 is the mean over the seeds (each
    seed's in ``macro_f1_seeds``). A hundred labels move one model's score by less than
    a change of seed does (docs/classifier.md, "The flywheel"), so one seed compares
    noise. ``view_options``, ``share_cap``: how each label is also cut and how much of
    its class's weight the labels may hold (``fit``'s; by default the shipped ones)."""
    labels, k = equal_labels(runs)
    fit_seeds = tuple(fit_seeds) if fit_seeds else (seed,)
    n_s = max(n_per_class * 3 // 8, 20)
    tr, va = [], []
    for g in generators:
        tr += generator_sets(g, n_per_class, seed, n_s)
        va += generator_sets(g, max(n_per_class // 3, 20), valid_seed, max(n_s // 3, 20))
    xy = fit_inputs(tr, va)  # the simulated sets' features, once for every model
    tests = {g: test_set(g, test_per_class) for g in generators}
    if sky is not None:
        tests["sky"] = sky_set(sky)
    report = {"labels_per_policy": k, "weights": list(weights), "fit_seeds": list(fit_seeds),
              "tests": {name: int(d.n) for name, d in tests.items()}}

    def scores(**kw) -> dict:
        models = [fit(tr, va, s, matrices=xy, **kw)[0] for s in fit_seeds]
        runs_ = [{name: score(m, d) for name, d in tests.items()} for m in models]
        out = runs_[0]
        for name, first in out.items():
            for part in ("full", "first_night"):
                if part in first:
                    f1 = [r[name][part]["macro_f1"] for r in runs_]
                    first[part]["macro_f1"] = round(float(np.mean(f1)), 4)
                    first[part]["macro_f1_seeds"] = f1
        return out

    report["none"] = scores()
    for name, lab in labels.items():
        for w in weights:
            report[f"{name}@{w:g}"] = {"n_labelled": int(lab.n),
                                       **scores(labelled=lab, labelled_weight=w,
                                                  view_options=view_options,
                                                  share_cap=share_cap)}
    return report
