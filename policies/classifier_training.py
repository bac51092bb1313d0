"""Training the transient classifier: LightGBM on simulated light curves (the SiTian survey's
cadence and random cadences), temperature scaling on held-out ones, and the report that
``brain train classifier`` prints (macro-F1, first-night macro-F1, calibration error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from observatory.taxonomy import CLASSES, TRANSIENTS
from policies.classifier import (
    ARTIFACT_DIR,
    TransientClassifier,
    model_feature_names,
    model_features,
    softmax,
)
from policies.lightcurve_io import LabelledSet
from policies.lightcurve_sets import make_redback_set, make_set
from policies.realdata import FIRST_NIGHT_D
from simulator.population import sample_positions
from simulator.reference import HOST_MATCH, reference_magnitudes

# The share of training light curves shown without a position: the model must classify
# from the light curve alone where there is none (a file without ra_deg/dec_deg).
NO_POSITION_FRACTION = 0.5


def positions(labels: np.ndarray, seed: int,
              missing: float = NO_POSITION_FRACTION) -> np.ndarray:
    """(n, 2) sky positions for light curves of classes ``labels``, drawn from each
    class's sky density (``simulator.population.sample_positions``: Galactic classes
    towards the plane and the bulge), with a ``missing`` share left NaN."""
    rng = np.random.default_rng([seed, 7])
    out = np.full((len(labels), 2), np.nan)
    for k, cls in enumerate(CLASSES):
        rows = np.flatnonzero(labels == k)
        if rows.size:
            out[rows] = np.stack(sample_positions(cls, rows.size, rng), axis=1)
    out[rng.random(len(labels)) < missing] = np.nan
    return out


# The share of training light curves shown without the survey's reference (a file without
# ref_mag, a pipeline that does not say): the model must do without it there.
NO_REFERENCE_FRACTION = 0.5


def references(data, seed: int, missing: float = NO_REFERENCE_FRACTION) -> np.ndarray | None:
    """(n, 3) what a survey's reference holds at each light curve (``simulator.reference``)
    from the set's steady counterparts, with the assumptions spread so that the model
    learns no one survey's: a reference depth per light curve (r 21.0-23.0), host and
    chance-match shares scaled by 0.5-1.5 per class; a ``missing`` share NaN (unknown).
    None where the set's generator gives no counterparts (real light curves)."""
    if data.base is None:
        return None
    rng = np.random.default_rng([seed, 0x5EF])
    names = np.asarray(CLASSES)[data.label]
    depth = rng.uniform(21.0, 23.0, data.n)[:, None] + np.array([0.1, 0.0, -0.3])
    host = {c: min(1.0, p * rng.uniform(0.5, 1.5)) for c, p in HOST_MATCH.items()}
    ref = reference_magnitudes(names, data.base, data.peak, depth, rng, host,
                               chance=rng.uniform(0.02, 0.1))
    ref[rng.random(data.n) < missing] = np.nan
    return ref


def set_features(data, seed: int, missing: float = NO_POSITION_FRACTION) -> np.ndarray:
    """Model features of a light-curve set, with positions (``positions``) and the
    reference (``references``) drawn for it."""
    return model_features(data.obj, data.mjd, data.band, data.mag, data.err, data.n,
                          positions(data.label, seed, missing), references(data, seed))


def fit_temperature(raw: np.ndarray, y: np.ndarray) -> float:
    def nll(log_t):
        p = softmax(raw / np.exp(log_t))
        return -np.mean(np.log(p[np.arange(len(y)), y] + 1e-12))

    return float(np.exp(minimize_scalar(nll, bounds=(-2, 2), method="bounded").x))


def expected_calibration_error(prob: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def evaluate(model: TransientClassifier, data, radec: np.ndarray | None = None,
             ref: np.ndarray | None = None) -> dict:
    """Macro-F1 on full and first-night light curves, transient-vs-variable accuracy
    after the first night, expected calibration error, and per-class F1 (light curves
    alone, or with positions ``radec`` and the reference ``ref``)."""
    from sklearn.metrics import confusion_matrix, f1_score  # lazy: heavy optional library

    prob = model.predict(data.obj, data.mjd, data.band, data.mag, data.err, data.n, radec,
                         ref)
    pred = prob.argmax(axis=1)
    y = data.label
    labels = list(range(len(CLASSES)))
    out = {}
    for name, sel in (("full", ~data.first_night), ("first_night", data.first_night)):
        out[name] = {
            "n": int(sel.sum()),
            "macro_f1": float(f1_score(y[sel], pred[sel], labels=labels, average="macro")),
            "per_class_f1": dict(zip(CLASSES, f1_score(y[sel], pred[sel], labels=labels,
                                                       average=None).round(3).tolist(),
                                     strict=True)),
            "ece": expected_calibration_error(prob[sel], y[sel]),
            "confusion": confusion_matrix(y[sel], pred[sel], labels=labels).tolist(),
        }
    # By how many nights the light curve spans (uneven windows on the events).
    nights = _nights(data)
    out["by_nights"] = {}
    for lo, hi in ((1, 1), (2, 3), (4, 9), (10, 29), (30, 10_000)):
        sel = ~data.first_night & (nights >= lo) & (nights <= hi)
        if sel.sum() >= 50:
            out["by_nights"][f"{lo}-{hi}"] = {
                "n": int(sel.sum()),
                "macro_f1": float(f1_score(y[sel], pred[sel], labels=labels, average="macro",
                                           zero_division=0))}
    transient = np.isin(np.array(CLASSES), TRANSIENTS)
    fn = data.first_night
    out["first_night"]["transient_vs_variable_accuracy"] = float(
        np.mean(transient[pred[fn]] == transient[y[fn]]))
    return out


def _nights(data) -> np.ndarray:
    """Nights with detections per light curve (gaps over half a day separate nights)."""
    new = np.ones(len(data.obj), dtype=bool)
    new[1:] = (data.obj[1:] != data.obj[:-1]) | (np.diff(data.mjd) > 0.5)
    return np.bincount(data.obj, weights=new.astype(float), minlength=data.n).astype(int)


GENERATORS = ("ours", "redback")  # what the shipped model is trained on (docs/classifier.md)
REDBACK_SHARE = 0.5  # redback light curves per class, relative to ours


def generator_sets(generator: str, n_per_class: int, seed: int, n_sitian: int,
                   first_night_fraction: float = 0.35, early_fraction: float = 0.0) -> list:
    """One generator's light curves for training or validation: randomised surveys
    (``n_per_class`` per class it covers, seed ``seed``) and the continuous SiTian survey
    (``n_sitian``, seed ``seed + 10``, half of them first nights). ``ours``: the
    simulator's own models (``policies.lightcurve_sets``); ``redback``: redback's
    physical transient models (``simulator.redback_curves``), seeds offset by 20 so no
    random stream is shared with ours."""
    if generator == "ours":
        return [(make_set(n_per_class, seed, first_night_fraction, "random", early_fraction),
                 seed),
                (make_set(n_sitian, seed + 10, 0.5, "sitian", early_fraction), seed + 10)]
    if generator == "redback":  # six classes; half as many each (REDBACK_SHARE)
        n_r, n_rs = (max(int(n * REDBACK_SHARE), 20) for n in (n_per_class, n_sitian))
        return [(make_redback_set(n_r, seed + 20, first_night_fraction, "random",
                                  early_fraction), seed + 20),
                (make_redback_set(n_rs, seed + 30, 0.5, "sitian", early_fraction), seed + 30)]
    raise ValueError(f"unknown light-curve generator {generator!r}")


# Fewer, larger trees than LightGBM's defaults: prediction costs per tree, and the brain
# classifies tens of thousands of candidates at a time (the 20,000 one-night light
# curves per second). Measured on the shipped training sets (docs/classifier.md):
# learning rate 0.1 with 31 leaves stops at 240 rounds (3,360 trees, 5,400 predictions
# per second, SiTian macro-F1 0.799 / 0.518); 0.2 with 63 leaves at 46 (644 trees,
# 30,000 per second, 0.790 / 0.516).
LGB_PARAMS = {"objective": "multiclass", "num_class": len(CLASSES), "learning_rate": 0.2,
              "num_leaves": 63, "min_data_in_leaf": 100, "feature_fraction": 0.8,
              "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
              "verbosity": -1, "num_threads": 0, "deterministic": True}
MAX_ROUNDS = 80


def fit(train_sets: list, valid_sets: list, seed: int = 1, rounds: int = MAX_ROUNDS,
        labelled=None, labelled_weight: float = 5.0, progress: bool = False,
        matrices: dict | None = None, view_options: dict | None = None,
        share_cap: float | None = None):
    """A calibrated model from ``(LightCurveSet, position seed)`` pairs: LightGBM on the
    training sets (plus ``labelled`` light curves, each counting ``labelled_weight``
    simulated light curves of its class: ``label_weights``), early stopping and the
    temperature on the validation sets. Returns (model, n_train, n_labelled).
    ``matrices``: the sets' features from ``fit_inputs``, when several models are
    trained on the same sets; ``view_options`` (``label_views``' options) and
    ``share_cap`` (``label_weights``'): by default the shipped ones."""
    xy = matrices if matrices is not None else fit_inputs(train_sets, valid_sets, progress)
    x, y = xy["train"]
    weight = np.ones(len(y))
    n_labelled = 0
    if labelled is not None and labelled.n:
        views = label_views(labelled, **(view_options or {}))
        xl = model_features(views.obj, views.mjd, views.band, views.mag, views.err, views.n)
        x, y = np.vstack([x, xl]), np.concatenate([y, views.label])
        weight = label_weights(y, views.n, labelled_weight, share_cap)
        n_labelled = int(labelled.n)
    model = fit_matrices(x, y, *xy["valid"], seed, rounds, weight, progress)
    return model, len(y), n_labelled


def fit_inputs(train_sets: list, valid_sets: list, progress: bool = False) -> dict:
    """{"train": (features, labels), "valid": (features, labels)} of ``fit``'s sets."""
    xy = {}
    for name, pairs in (("train", train_sets), ("valid", valid_sets)):
        xy[name] = (np.vstack([set_features(d, s) for d, s in pairs]),
                    np.concatenate([d.label for d, _ in pairs]))
        if progress:
            print(f"{name}: {len(xy[name][1])} light curves", flush=True)
    return xy


LABEL_VIEWS_D = (FIRST_NIGHT_D,)  # a labelled light curve also trains cut to these spans (d)
LABEL_WINDOWS = 3  # ... and to this many windows of it, each ...
LABEL_WINDOW_D = (1.0, 3.0)  # ... of a length drawn from this range (d), anywhere in it


def label_views(s: LabelledSet, spans=None, windows: int = LABEL_WINDOWS,
                window_d=LABEL_WINDOW_D, min_detections: int = 3, seed: int = 0) -> LabelledSet:
    """The labelled light curves and, for each span of ``LABEL_VIEWS_D``, each one cut to
    its detections within that span of its first, then ``windows`` windows of each, of
    random length (``window_d``) and start (seed ``seed``). A view is kept where it has
    ``min_detections`` and drops some.

    A spectrum tells the class of every stage of the object's light curve, and the
    classifier meets candidates at every stage and over a few nights (on their first
    night most of all), while a spectrum comes late, after days of photometry: a week's
    labelled light curves span 5.4 d at the median, the candidates the classifier meets
    2.2 d and, on their first night, 0.2 d (docs/classifier.md, "The flywheel")."""
    spans = LABEL_VIEWS_D if spans is None else spans
    t0 = np.full(s.n, np.inf)
    np.minimum.at(t0, s.obj, s.mjd)
    t1 = np.full(s.n, -np.inf)
    np.maximum.at(t1, s.obj, s.mjd)
    age = s.mjd - t0[s.obj]
    total = np.bincount(s.obj, minlength=s.n)
    cuts = [age < span for span in spans]
    rng = np.random.default_rng(seed)
    for _ in range(windows):
        length = rng.uniform(*window_d, s.n)
        start = rng.uniform(0.0, 1.0, s.n) * np.maximum(t1 - t0 - length, 0.0)
        cuts.append((age >= start[s.obj]) & (age < (start + length)[s.obj]))
    parts = [(np.ones(s.obj.size, bool), np.ones(s.n, bool))]  # (rows, objects) a view
    for rows in cuts:
        count = np.bincount(s.obj[rows], minlength=s.n)
        objs = (count >= min_detections) & (count < total)
        parts.append((rows & objs[s.obj], objs))
    obj, pick, offset = [], [], 0
    for rows, objs in parts:
        obj.append((np.cumsum(objs) - 1)[s.obj[rows]] + offset)
        pick.append(np.flatnonzero(rows))
        offset += int(objs.sum())
    return LabelledSet(np.concatenate(obj), *(np.concatenate([getattr(s, k)[p] for p in pick])
                                              for k in ("mjd", "band", "mag", "err")),
                       np.concatenate([s.label[objs] for _, objs in parts]))


LABEL_SHARE_CAP = 0.35  # labels hold at most this share of their class's weight (measured: one
# half lifts three held-out skies less, a quarter two of them; docs/classifier.md)


def label_weights(y: np.ndarray, n_labelled: int, labelled_weight: float,
                  share_cap: float | None = None) -> np.ndarray:
    """Training weights when the last ``n_labelled`` rows of ``y`` are spectroscopic
    labels: each label counts ``labelled_weight`` simulated light curves, taken from the
    simulated weight of its own class, so that every class keeps its total weight.

    A follow-up policy chooses which objects get a spectrum, so the labels' class mix is
    the policy's, not the sky's (a week of RL labels: RR Lyrae 71 of 250); added on top,
    they would shift the model's class priors toward it. Here labels change what a class
    looks like, not how common it is. A class's labels hold at most ``share_cap`` of its
    weight (a small training set, or many labels of one class; ``LABEL_SHARE_CAP``
    unless given)."""
    cap = LABEL_SHARE_CAP if share_cap is None else share_cap
    if not 0.0 < cap < 1.0:
        raise ValueError(f"a class's labels must hold a share of it between 0 and 1, not {cap}")
    y = np.asarray(y)
    n_sim = len(y) - n_labelled
    weight = np.ones(len(y))
    sim, lab = y[:n_sim], y[n_sim:]
    for k in np.unique(lab):
        total = float(np.sum(sim == k))
        n_k = int(np.sum(lab == k))
        if total == 0:  # a class the simulations lack: the labels alone, as given
            weight[n_sim:][lab == k] = labelled_weight
            continue
        share = min(labelled_weight * n_k, cap * total)
        weight[n_sim:][lab == k] = share / n_k
        weight[:n_sim][sim == k] = (total - share) / total
    return weight


def fit_matrices(x, y, xv, yv, seed: int = 1, rounds: int = MAX_ROUNDS, weight=None,
                 progress: bool = False) -> TransientClassifier:
    """LightGBM on feature matrices (``LGB_PARAMS``), early stopping and the temperature
    on the validation matrices, trimmed to the best iteration."""
    import lightgbm  # lazy: heavy optional library

    params = {**LGB_PARAMS, "seed": seed}
    dtrain = lightgbm.Dataset(x, y, weight=weight, feature_name=model_feature_names())
    dvalid = lightgbm.Dataset(xv, yv, reference=dtrain)
    callbacks = [lightgbm.early_stopping(30, verbose=False)]
    if progress:
        callbacks.append(lightgbm.log_evaluation(10))
    booster = lightgbm.train(params, dtrain, rounds, valid_sets=[dvalid],
                             callbacks=callbacks)
    raw = booster.predict(xv, raw_score=True, num_iteration=booster.best_iteration)
    booster = booster if booster.best_iteration <= 0 else _trim(booster)
    return TransientClassifier(booster, fit_temperature(np.asarray(raw), yv))


def train(n_per_class: int = 8000, seed: int = 1, valid_seed: int = 2, test_seed: int = 3,
          rounds: int = MAX_ROUNDS, out_dir: Path | None = ARTIFACT_DIR, progress: bool = False,
          sitian_per_class: int | None = None, labelled=None, labelled_weight: float = 5.0,
          generators: tuple[str, ...] = GENERATORS, early_fraction: float = 0.0):
    """Train on simulated light curves; returns (model, report).

    Training data: every generator of ``generators`` (``generator_sets``: randomised
    surveys, ``n_per_class`` per class, seed ``seed``, plus the continuous SiTian
    survey, ``sitian_per_class``, default 3/8 of that). The temperature is fitted on
    ``valid_seed``; the report's two test sets, never trained on, are our SiTian survey
    (``test_seed + 10``: the set the targets are measured on) and our randomised
    surveys (``test_seed``: robustness to other cadences and depths).

    ``labelled``: light curves with spectroscopic labels from earlier runs (the data
    flywheel; ``policies.lightcurve_io.LabelledSet``), added to the training set, each
    counting ``labelled_weight`` simulated light curves of its class (``label_weights``).
    ``early_fraction``: that share of the training and validation light curves (first
    nights aside) cut to their first 2-4 nights (``make_set``); the held-out report's
    sets are not cut."""
    n_s = sitian_per_class if sitian_per_class is not None else max(n_per_class * 3 // 8, 20)
    train_sets, valid_sets = [], []
    for g in generators:
        train_sets += generator_sets(g, n_per_class, seed, n_s, early_fraction=early_fraction)
        valid_sets += generator_sets(g, max(n_per_class // 3, 20), valid_seed,
                                     max(n_s // 3, 20), early_fraction=early_fraction)
    model, n_train, n_labelled = fit(train_sets, valid_sets, seed, rounds, labelled,
                                     labelled_weight, progress)
    report = held_out_report(model, n_per_class, n_s, seed, valid_seed, test_seed, generators,
                         n_train, n_labelled)
    if out_dir is not None:
        model.save(out_dir, report)
    return model, report


def held_out_report(model, n_per_class: int, n_s: int, seed: int, valid_seed: int,
                test_seed: int, generators, n_train: int, n_labelled: int) -> dict:
    """The artifact's report: how it was trained and its two held-out test sets."""
    test_sitian = make_set(max(n_s // 2, 20), test_seed + 10, 0.5, "sitian")
    test_random = make_set(max(n_per_class // 3, 20), test_seed)
    return {"seeds": {"train": [seed, seed + 10], "valid": [valid_seed, valid_seed + 10],
                      "test_sitian": test_seed + 10, "test_random": test_seed},
            "generators": list(generators), "n_train": n_train, "n_labelled": n_labelled,
            "rounds": int(model.booster.current_iteration()),
            "temperature": model.temperature, "test": evaluate(model, test_sitian),
            "test_random": evaluate(model, test_random),
            # The SiTian set again, with what a survey's reference holds at every source.
            "test_reference": evaluate(model, test_sitian,
                                       ref=references(test_sitian, test_seed + 10, 0.0))}


def _trim(booster):
    """Keep only the trees up to the best validation iteration."""
    import lightgbm  # lazy: heavy optional library

    text = booster.model_to_string(num_iteration=booster.best_iteration)
    return lightgbm.Booster(model_str=text)
