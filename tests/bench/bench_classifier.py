"""Classifier inference throughput: light curves per second in batch on this machine.

One JSON line. Light curves from the training generator (seed 4242, never trained on),
all classes, randomised cadences. Ours: features (our own, the light-curve library's,
and the context columns, empty here) and prediction for the whole batch at once.
In-run baselines: the same model called one light curve at a time (a service without
batching), timed on a subset; and LightGBM's own ``Booster.predict`` on the batch's
features, against the compiled trees (``policies.forest``) the model predicts with.
The issue's target is 20,000 per second.
"""

from __future__ import annotations

import json
import time

import numpy as np

from policies.classifier import TransientClassifier, model_features
from policies.lightcurve_sets import make_set


def main() -> None:
    t_load = time.perf_counter()
    model = TransientClassifier.load()
    load_s = time.perf_counter() - t_load
    data = make_set(1500, seed=4242)
    n_det = np.bincount(data.obj)
    t_first = time.perf_counter()  # the first call flattens the trees, loads the kernel
    model.predict(data.obj[:100], data.mjd[:100], data.band[:100], data.mag[:100],
                  data.err[:100], int(data.obj[99]) + 1)
    first_call_s = time.perf_counter() - t_first
    t0 = time.perf_counter()
    feats = model_features(data.obj, data.mjd, data.band, data.mag, data.err, data.n)
    t1 = time.perf_counter()
    model.predict_features(feats)
    t2 = time.perf_counter()
    subset = 300
    starts = np.searchsorted(data.obj, np.arange(subset))
    stops = np.searchsorted(data.obj, np.arange(subset) + 1)
    t3 = time.perf_counter()
    for a, b in zip(starts, stops, strict=True):
        model.predict(np.zeros(b - a, int), data.mjd[a:b], data.band[a:b], data.mag[a:b],
                      data.err[a:b], 1)
    t4 = time.perf_counter()
    lgb = []  # LightGBM's own predict on the same features: what the compiled trees beat
    for _ in range(3):
        t = time.perf_counter()
        model.booster.predict(feats, raw_score=True, num_threads=0)
        lgb.append(time.perf_counter() - t)
    batch_rate = data.n / (t2 - t0)
    single_rate = subset / (t4 - t3)
    # One-night light curves (what a SiTian candidate has after its first night).
    sel = data.first_night[data.obj]
    ids, local = np.unique(data.obj[sel], return_inverse=True)
    night = []  # the median of five calls: one call of ~0.15 s is at the mercy of the OS
    for _ in range(5):
        t5 = time.perf_counter()
        model.predict(local, data.mjd[sel], data.band[sel], data.mag[sel], data.err[sel],
                      ids.size)
        night.append(time.perf_counter() - t5)
    night_rate = ids.size / float(np.median(night))
    night_lgb = []  # the same, through LightGBM's own predict
    for _ in range(5):
        t5 = time.perf_counter()
        f = model_features(local, data.mjd[sel], data.band[sel], data.mag[sel],
                           data.err[sel], ids.size)
        model.booster.predict(f, raw_score=True, num_threads=0)
        night_lgb.append(time.perf_counter() - t5)
    print(json.dumps({
        "bench": "classifier", "light_curves": int(data.n),
        "detections_mean": round(float(np.mean(n_det)), 1),
        "detections_median": int(np.median(n_det)), "trees": model.booster.num_trees(),
        "detections_per_s": round(len(data.obj) / (t2 - t0)),
        "features_per_s": round(data.n / (t1 - t0)), "predict_per_s": round(data.n / (t2 - t1)),
        "lightgbm_predict_per_s": round(data.n / float(np.median(lgb))),
        "batch_light_curves_per_s": round(batch_rate),
        "baseline_one_at_a_time_per_s": round(single_rate),
        "speedup_vs_baseline": round(batch_rate / single_rate, 1),
        "one_night_light_curves": int(ids.size),
        "one_night_detections_mean": round(float(sel.sum() / max(ids.size, 1)), 1),
        "one_night_light_curves_per_s": round(night_rate),
        "one_night_lightgbm_per_s": round(ids.size / float(np.median(night_lgb))),
        "target_per_s": 20000,
        "load_s": round(load_s, 2), "first_call_s": round(first_call_s, 2),
    }))


if __name__ == "__main__":
    main()
