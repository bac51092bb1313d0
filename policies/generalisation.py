"""How the classifier does on a sky it was not trained on: leave-one-generator-out.

The classifier will meet light curves from generators written by other people (and from
the real sky), so the number that predicts how it does there is not its score on more of
its own training distribution but its score on a generator it never saw. The
generators here:

* ``ours``: the simulator's light-curve models (``simulator/lightcurves.py``) through
  randomised surveys and the SiTian survey (``policies.lightcurve_sets``); all classes.
* ``redback``: redback's physical transient models (``simulator.redback_curves``)
  through the same surveys; the transient classes it covers.
* ``real``: real light curves that ship in PyPI packages (``policies.realdata``): Type I
  superluminous supernovae (``slsne``) and microlensing events (``MulensModel``); only
  ever a test set (242 and 24 light curves).

For each held-out generator a model is trained on the others alone (``fit``, the same
recipe as the shipped model) and scored on the held-out one: macro-F1 over the classes
that generator has, on full light curves and first nights, recall per class, and the
expected calibration error. Run by ``brain bench generalisation``.
"""

from __future__ import annotations

import numpy as np

from observatory.bands import BAND_INDEX
from observatory.taxonomy import CLASSES
from policies.classifier_training import (
    GENERATORS,
    expected_calibration_error,
    fit,
    generator_sets,
    positions,
)
from policies.lightcurve_sets import LightCurveSet, make_set
from policies.realdata import first_night, mulens_light_curves, slsne_light_curves

TEST_SEED = 3  # never trained on: randomised surveys seed 3, SiTian survey seed 13


def test_set(generator: str, n_per_class: int, seed: int = TEST_SEED) -> LightCurveSet:
    """A generator's held-out set: randomised and SiTian surveys together (half first
    nights in the SiTian part), or the real light curves and their first nights."""
    if generator == "real":
        return real_set()
    parts = [d for d, _ in generator_sets(generator, n_per_class, seed, n_per_class)]
    return concat(parts)


def concat(sets: list[LightCurveSet]) -> LightCurveSet:
    """Light-curve sets one after another (objects renumbered)."""
    off = np.cumsum([0] + [d.n for d in sets])
    known = all(d.base is not None for d in sets)
    return LightCurveSet(np.concatenate([d.obj + o for d, o in zip(sets, off, strict=False)]),
                         *(np.concatenate([getattr(d, k) for d in sets])
                           for k in ("mjd", "band", "mag", "err", "label", "first_night")),
                         *((np.concatenate([d.base for d in sets]),
                            np.concatenate([d.peak for d in sets])) if known else ()))


def real_set() -> LightCurveSet:
    """Every real light curve (``policies.realdata``) and its first night, labelled."""
    groups = [("SLSN", slsne_light_curves()), ("uLens", mulens_light_curves())]
    obj, mjd, band, mag, err, label, first = [], [], [], [], [], [], []
    k = 0
    for cls, curves in groups:
        for fn, cs in ((False, curves), (True, first_night(curves))):
            for _oid, c in cs:
                order = np.argsort(c["mjd"], kind="stable")
                obj.append(np.full(order.size, k))
                mjd.append(c["mjd"][order])
                band.append(np.array([BAND_INDEX[b] for b in c["band"][order]]))
                mag.append(c["mag"][order])
                err.append(c["mag_err"][order])
                label.append(CLASSES.index(cls))
                first.append(fn)
                k += 1
    return LightCurveSet(np.concatenate(obj), np.concatenate(mjd), np.concatenate(band),
                         np.concatenate(mag), np.concatenate(err), np.array(label),
                         np.array(first))


def score(model, data: LightCurveSet, with_positions: bool = False) -> dict:
    """Macro-F1 over the classes present (full light curves and first nights), recall
    per class on full light curves, expected calibration error."""
    from sklearn.metrics import f1_score, recall_score  # lazy: heavy optional library

    radec = positions(data.label, 99, missing=0.0) if with_positions else None
    prob = model.predict(data.obj, data.mjd, data.band, data.mag, data.err, data.n, radec)
    pred = prob.argmax(axis=1)
    out = {"n": int(data.n)}
    for name, sel in (("full", ~data.first_night), ("first_night", data.first_night)):
        present = np.unique(data.label[sel])
        if present.size == 0:
            continue
        y, p = data.label[sel], pred[sel]
        out[name] = {
            "n": int(sel.sum()),
            "macro_f1": round(float(f1_score(y, p, labels=present, average="macro",
                                             zero_division=0)), 3),
            "recall": {CLASSES[c]: round(float(r), 3) for c, r in zip(
                present, recall_score(y, p, labels=present, average=None, zero_division=0),
                strict=True)},
            "ece": round(expected_calibration_error(prob[sel], y), 3)}
    return out


def leave_one_generator_out(n_per_class: int = 2000, seed: int = 1, valid_seed: int = 2,
                            test_per_class: int = 400, held_out=("redback", "ours", "real"),
                            progress: bool = False) -> dict:
    """For each held-out generator: a model trained on the other generators only,
    scored on the held-out one. ``real`` is held out from a model trained on every
    simulated generator (it is never trained on)."""
    n_s = max(n_per_class * 3 // 8, 20)
    report = {"n_per_class": n_per_class, "test_per_class": test_per_class}
    for held in held_out:
        train_on = [g for g in GENERATORS if g != held]
        tr, va = [], []
        for g in train_on:
            tr += generator_sets(g, n_per_class, seed, n_s)
            va += generator_sets(g, max(n_per_class // 3, 20), valid_seed, max(n_s // 3, 20))
        model, n_train, _ = fit(tr, va, seed)
        report[held] = {"trained_on": train_on, "n_train": n_train,
                        **score(model, test_set(held, test_per_class))}
        if progress:
            print(held, report[held], flush=True)
    return report


def within_generator(n_per_class: int = 2000, seed: int = 1, valid_seed: int = 2,
                     test_per_class: int = 400) -> dict:
    """The comparison row: trained and tested on our own generator (held-out seeds)."""
    n_s = max(n_per_class * 3 // 8, 20)
    model, _, _ = fit(generator_sets("ours", n_per_class, seed, n_s),
                      generator_sets("ours", max(n_per_class // 3, 20), valid_seed,
                                     max(n_s // 3, 20)), seed)
    return score(model, concat([make_set(test_per_class, TEST_SEED),
                                make_set(test_per_class, TEST_SEED + 10, 0.5, "sitian")]))
