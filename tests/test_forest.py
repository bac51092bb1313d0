"""The compiled trees (policies.forest) give LightGBM's own raw scores, bit for bit: on
the shipped model, on features with missing values, zeros and infinities, and on a
model trained here with NaN-default and plain splits; and the classifier uses them."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from policies.classifier import TransientClassifier, model_features
from policies.forest import CompiledForest
from policies.lightcurve_sets import make_set


@pytest.fixture(scope="module")
def shipped():
    return TransientClassifier.load()


@pytest.fixture(scope="module")
def features():
    d = make_set(60, seed=4243, first_night_fraction=0.5)
    x = model_features(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    rng = np.random.default_rng(0)
    hard = x.copy()  # values a split's rule must treat exactly as LightGBM does
    hard[rng.random(hard.shape) < 0.1] = np.nan
    hard[rng.random(hard.shape) < 0.02] = 0.0
    hard[rng.random(hard.shape) < 0.01] = np.inf
    hard[rng.random(hard.shape) < 0.01] = -np.inf
    return np.vstack([x, hard, np.full((3, x.shape[1]), np.nan)])


def test_compiled_trees_equal_lightgbm_on_the_shipped_model(shipped, features):
    forest = CompiledForest(shipped.booster)
    assert forest.roots.size == shipped.booster.num_trees()
    want = shipped.booster.predict(features, raw_score=True)
    assert np.array_equal(forest.raw(features), want)


def test_compiled_trees_equal_lightgbm_on_a_model_with_both_missing_rules():
    import lightgbm

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 6))
    y = (x[:, 0] + np.nan_to_num(x[:, 1]) > 0).astype(int) + (x[:, 2] > 1)
    x[rng.random(x.shape) < 0.2] = np.nan  # learned default ways ("NaN" splits)
    x[:, 5] = rng.normal(size=3000)  # no NaN in training: "None" splits at predict
    booster = lightgbm.train({"objective": "multiclass", "num_class": 3, "verbosity": -1,
                              "num_leaves": 15, "seed": 1, "deterministic": True},
                             lightgbm.Dataset(x, y), 20)
    kinds = {n["missing_type"] for n in _splits(booster.dump_model())}
    assert kinds == {"NaN", "None"}
    test = rng.normal(size=(2000, 6))
    test[rng.random(test.shape) < 0.3] = np.nan  # NaN where the split learned none too
    test[rng.random(test.shape) < 0.05] = 0.0
    assert np.array_equal(CompiledForest(booster).raw(test),
                          booster.predict(test, raw_score=True))


def _splits(node_or_model):
    nodes = [t["tree_structure"] for t in node_or_model["tree_info"]]
    while nodes:
        n = nodes.pop()
        if "split_index" in n:
            yield n
            nodes += [n["left_child"], n["right_child"]]


def test_the_classifier_predicts_through_the_compiled_trees(shipped, features):
    fresh = TransientClassifier(shipped.booster, shipped.temperature)
    prob = fresh.predict_features(features)
    assert isinstance(fresh._forest, CompiledForest)
    assert np.allclose(prob.sum(axis=1), 1.0)
    raw = shipped.booster.predict(features, raw_score=True) / shipped.temperature
    e = np.exp(raw - raw.max(axis=1, keepdims=True))
    assert np.array_equal(prob, e / e.sum(axis=1, keepdims=True))
    assert fresh.predict_features(features[:0]).shape == (0, prob.shape[1])


def test_threads_may_share_one_classifier(shipped, features):
    want = shipped.predict_features(features)
    got, errors = [None] * 4, []

    def work(i):
        try:
            got[i] = shipped.predict_features(features)
        except Exception as exc:  # recorded and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(g, want) for g in got)


def test_features_of_the_wrong_width_are_refused(shipped):
    forest = CompiledForest(shipped.booster)
    with pytest.raises(ValueError, match="features"):
        forest.raw(np.zeros((2, 3)))


def test_a_process_forked_after_a_prediction_can_predict(shipped, features):
    want = shipped.predict_features(features)  # the kernel's thread pool is running
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: classify, report, leave without running pytest's exit
        ok = np.array_equal(shipped.predict_features(features), want)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and os.waitstatus_to_exitcode(status) == 0
