"""Leave-one-generator-out's pieces: the held-out sets it scores on."""

from __future__ import annotations

import numpy as np

from observatory.taxonomy import CLASSES
from policies.generalisation import concat, real_set
from policies.lightcurve_sets import make_set


def test_real_set_is_labelled_real_light_curves_and_their_first_nights():
    d = real_set()
    labels = set(np.asarray(CLASSES)[np.unique(d.label)])
    assert labels == {"SLSN", "uLens"}
    assert np.all(np.diff(d.obj) >= 0) and d.obj.max() + 1 == d.n
    t0 = np.full(d.n, np.inf)
    t1 = np.full(d.n, -np.inf)
    np.minimum.at(t0, d.obj, d.mjd)
    np.maximum.at(t1, d.obj, d.mjd)
    assert np.all(t1[d.first_night] - t0[d.first_night] <= 0.6)
    assert np.sum(~d.first_night & (d.label == CLASSES.index("SLSN"))) >= 200


def test_concat_renumbers_objects_and_keeps_labels():
    a, b = make_set(3, seed=1), make_set(2, seed=2)
    c = concat([a, b])
    assert c.n == a.n + b.n
    np.testing.assert_array_equal(c.label, np.concatenate([a.label, b.label]))
    np.testing.assert_array_equal(c.mjd[c.obj >= a.n], b.mjd)
    assert np.all(np.diff(c.obj) >= 0)
