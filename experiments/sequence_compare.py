"""The GRU sequence model against the trees, on the same training sets.

Both are trained on ours + redback (``generator_sets``, seed 1; validation seed 2) and
scored with ``generalisation.score`` on our held-out sets, redback's and the real light
curves, with ensembles of the two; then both are trained on ours alone and scored on
redback (leave one generator out). Speed: first-night light curves per second through
``predict`` on one thread. Prints one JSON object.

    python -m experiments.sequence_compare --n 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from policies.classifier_training import fit, fit_temperature, generator_sets
from policies.generalisation import concat, real_set, score, test_set
from policies.lightcurve_sets import make_set
from policies.sequence import EnsembleClassifier
from policies.sequence_training import train_sequence


def _sets(generators, n, seed, valid_seed):
    n_s = max(n * 3 // 8, 20)
    tr, va = [], []
    for g in generators:
        tr += generator_sets(g, n, seed, n_s)
        va += generator_sets(g, max(n // 3, 20), valid_seed, max(n_s // 3, 20))
    return tr, va


def _both(generators, n, epochs, log):
    tr, va = _sets(generators, n, 1, 2)
    t = time.perf_counter()
    trees, n_train, _ = fit(tr, va, 1)
    t_trees = time.perf_counter() - t
    gru, rep = train_sequence(tr, va, seed=1, epochs=epochs, progress=True)
    log(f"{generators}: trees {t_trees:.0f} s, gru {rep['train_seconds']} s")
    return trees, gru, va, {"n_train": n_train, "trees_seconds": round(t_trees, 1),
                            "gru": {k: v for k, v in rep.items() if k != "history"}}


def _ensembles(trees, gru, va):
    """The mean, and the log-probability mix with weight and temperature fitted on the
    validation set (log loss)."""
    v = concat([d for d, _ in va])
    args = (v.obj, v.mjd, v.band, v.mag, v.err, v.n)
    pt, ps = trees.predict(*args), gru.predict(*args)
    best = None
    for w in (0.3, 0.5, 0.7):
        z = (1 - w) * np.log(pt + 1e-12) + w * np.log(ps + 1e-12)
        temp = fit_temperature(z, v.label)
        e = EnsembleClassifier(trees, gru, w, "log", temp)
        nll = -np.mean(np.log(e.combine(pt, ps)[np.arange(v.n), v.label] + 1e-12))
        if best is None or nll < best[0]:
            best = (nll, e)
    return {"mean": EnsembleClassifier(trees, gru, 0.5, "mean"), "logmix": best[1]}


def _speed(model, data, repeat=2):
    args = (data.obj, data.mjd, data.band, data.mag, data.err, data.n)
    model.predict(*args)
    t = time.perf_counter()
    for _ in range(repeat):
        model.predict(*args)
    return round(repeat * data.n / (time.perf_counter() - t))


def main(argv=None):
    import torch  # lazy: heavy library

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="training light curves per class")
    ap.add_argument("--test", type=int, default=300, help="test light curves per class")
    ap.add_argument("--epochs", type=int, default=40)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:.0f} s] {msg}", flush=True)

    out = {"n_per_class": a.n, "test_per_class": a.test}
    trees, gru, va, out["train_all"] = _both(("ours", "redback"), a.n, a.epochs, log)
    ens = _ensembles(trees, gru, va)
    out["logmix"] = {"weight": ens["logmix"].weight,
                     "temperature": round(ens["logmix"].temperature, 3)}
    models = {"trees": trees, "gru": gru, "ensemble_mean": ens["mean"],
              "ensemble_logmix": ens["logmix"]}
    tests = {g: test_set(g, a.test) for g in ("ours", "redback")}
    tests["real"] = real_set()
    log("test sets made")
    out["scores"] = {t: {m: score(model, d) for m, model in models.items()}
                     for t, d in tests.items()}
    fn = make_set(max(a.test // 3, 20), 77, first_night_fraction=1.0)
    fn = concat([fn, fn, fn, fn])
    out["speed_first_night_per_s"] = {"n": int(fn.n), **{m: _speed(model, fn)
                                                        for m, model in models.items()}}
    log("scored; leave one generator out")
    trees_o, gru_o, va_o, out["train_ours"] = _both(("ours",), a.n, a.epochs, log)
    ens_o = _ensembles(trees_o, gru_o, va_o)
    out["logo_ours_to_redback"] = {
        m: score(model, tests["redback"]) for m, model in
        {"trees": trees_o, "gru": gru_o, "ensemble_mean": ens_o["mean"],
         "ensemble_logmix": ens_o["logmix"]}.items()}
    out["seconds"] = round(time.perf_counter() - start)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
