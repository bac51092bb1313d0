"""The sequence classifier (policies/sequence.py): its output contract, determinism, the
saved artifact, and per-object answers independent of the batch."""

from __future__ import annotations

import numpy as np
import pytest

from observatory.taxonomy import CLASSES
from policies.generalisation import concat
from policies.lightcurve_sets import make_set
from policies.sequence import MAX_TOKENS, SequenceClassifier, tokenise
from policies.sequence_training import train_sequence


@pytest.fixture(scope="module")
def data():
    return make_set(6, 5), make_set(3, 6)


@pytest.fixture(scope="module")
def model(data):
    import torch  # lazy: heavy library

    torch.set_num_threads(1)
    tr, va = data
    return train_sequence([(tr, 5)], [(va, 6)], seed=3, epochs=2)[0]


def _args(d):
    return d.obj, d.mjd, d.band, d.mag, d.err, d.n


def test_one_row_per_object_summing_to_one_even_without_detections(model, data):
    d = data[1]
    # one more object (the last) with no detections
    prob = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n + 1)
    assert prob.shape == (d.n + 1, len(CLASSES))
    assert np.allclose(prob.sum(axis=1), 1.0)
    assert (prob >= 0).all()
    assert np.allclose(prob[-1], 1 / len(CLASSES))
    empty = model.predict(np.array([], int), *(np.array([]),) * 4, 3)
    assert empty.shape == (3, len(CLASSES))


def test_same_seed_same_predictions(data):
    import torch  # lazy: heavy library

    torch.set_num_threads(1)
    tr, va = data
    a = train_sequence([(tr, 5)], [(va, 6)], seed=4, epochs=1)[0].predict(*_args(va))
    b = train_sequence([(tr, 5)], [(va, 6)], seed=4, epochs=1)[0].predict(*_args(va))
    assert np.array_equal(a, b)


def test_saved_and_loaded_model_predicts_the_same(model, data, tmp_path):
    model.save(tmp_path, {"note": "test"})
    again = SequenceClassifier.load(tmp_path)
    assert again.report == {"note": "test"}
    assert np.allclose(again.predict(*_args(data[1])), model.predict(*_args(data[1])),
                       atol=1e-6)


def test_an_object_gets_the_same_answer_alone_or_in_a_batch(model, data):
    tr, va = data
    together = model.predict(*_args(concat([va, tr])))
    alone = model.predict(*_args(va))
    assert np.allclose(together[:va.n], alone, atol=1e-5)
    sel = va.obj == 2
    single = model.predict(np.zeros(sel.sum(), int), va.mjd[sel], va.band[sel],
                           va.mag[sel], va.err[sel], 1)
    assert np.allclose(single[0], alone[2], atol=1e-5)


def test_long_light_curves_keep_their_first_and_last_detection():
    n = 500
    mjd = 60000 + np.arange(n) * 0.1
    tokens, lengths, _ = tokenise(np.zeros(n, int), mjd, np.arange(n) % 3,
                                  20 - np.arange(n) / n, np.full(n, 0.05))
    assert lengths[0] == MAX_TOKENS
    assert tokens[0, 0, 0] == 0  # first token at the first detection
    assert np.isclose(tokens[0, -1, 0], np.log1p((n - 1) * 0.1 * 24) / 5)  # last kept
