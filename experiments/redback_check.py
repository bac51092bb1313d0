"""The shipped classifier on light curves from a generator it never saw: redback's
physical models (simulator/redback_curves.py; docs/classifier.md, "An independent
generator: redback").

For each survey ("random", "sitian"): a redback set of 300 light curves per covered
class (seed 101) and, as the reference, our own generator's set with the same seed and
size, both scored over the covered classes only (a prediction of any other class counts
as a miss). Prints JSON: generation time (redback's import apart), macro-F1 and
per-class recall (all light curves, full and first-night), and the confusion of the
redback set (rows: true covered class; columns: all predicted classes).
Run: ``python -m experiments.redback_check`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import time

import numpy as np

from observatory.taxonomy import CLASSES
from policies.classifier import TransientClassifier
from policies.lightcurve_sets import make_redback_set, make_set
from simulator.redback_curves import redback_classes

COVERED = [CLASSES.index(c) for c in redback_classes()]


def score(model: TransientClassifier, d) -> dict:
    """Macro-F1 over the covered classes and per-class recall, for all, full and
    first-night light curves, and the confusion over all light curves."""
    from sklearn.metrics import confusion_matrix, f1_score  # lazy: heavy optional library

    pred = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n).argmax(axis=1)
    keep = np.isin(d.label, COVERED)
    out = {}
    for name, sel in (("all", keep), ("full", keep & ~d.first_night),
                      ("first_night", keep & d.first_night)):
        y, p = d.label[sel], pred[sel]
        out[name] = {
            "n": int(sel.sum()),
            "macro_f1": round(float(f1_score(y, p, labels=COVERED, average="macro",
                                             zero_division=0)), 3),
            "recall": {CLASSES[k]: round(float(np.mean(p[y == k] == k)), 3) for k in COVERED},
        }
    cm = confusion_matrix(d.label[keep], pred[keep], labels=list(range(len(CLASSES))))
    out["confusion"] = {CLASSES[k]: {CLASSES[j]: int(cm[k, j]) for j in range(len(CLASSES))
                                     if cm[k, j]} for k in COVERED}
    return out


def main(n_per_class: int = 300, seed: int = 101) -> dict:
    model = TransientClassifier.load()
    t0 = time.perf_counter()
    make_redback_set(1, 0)  # imports redback and bilby once, outside the timings
    out = {"redback_import_seconds": round(time.perf_counter() - t0, 1)}
    for survey in ("random", "sitian"):
        t0 = time.perf_counter()
        rb = make_redback_set(n_per_class, seed, survey=survey)
        t_rb = time.perf_counter() - t0
        t0 = time.perf_counter()
        own = make_set(n_per_class, seed, survey=survey)
        t_own = time.perf_counter() - t0
        out[survey] = {"redback": {"seconds": round(t_rb, 1), "light_curves": rb.n,
                                   "detections": len(rb.obj), **score(model, rb)},
                       "own_generator": {"seconds": round(t_own, 1), **score(model, own)}}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
