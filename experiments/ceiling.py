"""Ceiling experiment for the classifier's targets (docs/classifier.md, "Known gaps").

Specialist models trained only on the SiTian survey (``policies.lightcurve_sets.observe_sitian``)
for first-night and for full light curves, at 1,500 and 6,000 light curves per class,
scored on the SiTian held-out set (seed 13). A flat learning curve far below a target
says the light curves, not the model's capacity or the amount of data, limit the
score. Run: ``python -m experiments.ceiling`` (about 12 minutes on 2 cores).
"""

from __future__ import annotations

import json
import time

import numpy as np

from observatory.taxonomy import CLASSES, TRANSIENTS
from policies.features import extract
from policies.lightcurve_sets import make_set


def main() -> None:
    import lightgbm  # lazy: heavy optional library
    from sklearn.metrics import f1_score  # lazy: heavy optional library

    def xy(d):
        return extract(d.obj, d.mjd, d.band, d.mag, d.err, d.n), d.label, d.first_night

    xt, yt, ft = xy(make_set(1500, 13, 0.5, "sitian"))
    transient = np.isin(np.array(CLASSES), TRANSIENTS)
    out = {}
    for frac, name in ((1.0, "first_night"), (0.0, "full")):
        for n in (1500, 6000):
            t0 = time.time()
            x, y, _ = xy(make_set(n, 21, frac, "sitian"))
            xv, yv, _ = xy(make_set(800, 22, frac, "sitian"))
            params = {"objective": "multiclass", "num_class": len(CLASSES),
                      "learning_rate": 0.08, "num_leaves": 63, "min_data_in_leaf": 40,
                      "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1,
                      "verbosity": -1, "seed": 1, "num_threads": 2}
            booster = lightgbm.train(params, lightgbm.Dataset(x, y), 1500,
                                     valid_sets=[lightgbm.Dataset(xv, yv)],
                                     callbacks=[lightgbm.early_stopping(50, verbose=False)])
            sel = ft if name == "first_night" else ~ft
            pred = booster.predict(xt[sel], num_iteration=booster.best_iteration).argmax(1)
            out[f"{name}_{n}"] = {
                "macro_f1": round(float(f1_score(yt[sel], pred, average="macro")), 3),
                "transient_vs_variable": round(float(np.mean(
                    transient[pred] == transient[yt[sel]])), 3),
                "rounds": booster.best_iteration, "seconds": round(time.time() - t0)}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
