"""Association merges detections of one source and separates distinct sources."""

from __future__ import annotations

import numpy as np

from brain.core.association import Associator, DetectionBatch


def _batch(ra, dec, mjd, band=None, truth=None):
    n = len(ra)
    return DetectionBatch(np.asarray(ra, float), np.asarray(dec, float),
                          np.full(n, mjd, float),
                          np.zeros(n, np.int64) if band is None else np.asarray(band),
                          np.full(n, 20.0), np.full(n, 0.05),
                          None if truth is None else np.asarray(truth))


def test_merge_within_radius_and_split_beyond():
    """Detections 1.5" apart (radius 2") are one object; 2.5" apart are two."""
    a = Associator(radius_arcsec=2.0)
    a.add(_batch([10.0], [20.0], 60000.0))
    near = a.add(_batch([10.0], [20.0 + 1.5 / 3600], 60000.1))
    far = a.add(_batch([10.0], [20.0 - 2.5 / 3600], 60000.2))
    assert near[0] == 0
    assert far[0] == 1
    assert a.n_objects == 2
    np.testing.assert_array_equal(a.n_detections(), [2, 1])


def test_ra_separation_is_on_the_sky_not_in_coordinates():
    """At dec 80 deg, 10" of RA is 1.7" on the sky: the same object."""
    a = Associator(radius_arcsec=2.0)
    a.add(_batch([100.0], [80.0], 60000.0))
    ids = a.add(_batch([100.0 + 10 / 3600], [80.0], 60000.1))
    assert ids[0] == 0 and a.n_objects == 1


def test_three_bands_of_one_visit_make_one_new_object():
    """Unmatched detections of the same source in one batch (g, r, i of a visit) are
    grouped into a single new object; a neighbour 5" away is another."""
    a = Associator(radius_arcsec=2.0)
    ids = a.add(_batch([50.0, 50.0 + 0.3 / 3600, 50.0, 50.0],
                       [0.0, 0.0, 0.2 / 3600, 5.0 / 3600], 60000.0, band=[0, 1, 2, 0]))
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert a.n_objects == 2


def test_candidates_need_three_detections_and_light_curves_are_time_sorted():
    a = Associator(radius_arcsec=2.0)
    for k, mjd in enumerate([60002.0, 60000.0, 60001.0]):
        a.add(_batch([1.0, 2.0][: 1 + (k == 0)], [1.0, 2.0][: 1 + (k == 0)], mjd))
    three = np.flatnonzero(a.n_detections() >= 3)
    np.testing.assert_array_equal(three, [0])
    obj, mjd, *_ = a.light_curves(three)
    np.testing.assert_array_equal(obj, [0, 0, 0])
    np.testing.assert_array_equal(mjd, [60000.0, 60001.0, 60002.0])


def test_many_sources_many_epochs_stay_pure():
    """20,000 random sources seen in 12 batches with 0.3" scatter: one object per source
    and no object mixing two sources (the k-d trees are rebuilt along the way)."""
    rng = np.random.default_rng(5)
    n = 20_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    a = Associator(radius_arcsec=2.0)
    for epoch in range(12):
        sel = np.flatnonzero(rng.random(n) < 0.6)
        jitter = rng.normal(0, 0.3 / 3600, (2, sel.size))
        a.add(_batch(ra[sel] + jitter[0] / np.cos(np.radians(dec[sel])), dec[sel] + jitter[1],
                     60000.0 + epoch, truth=sel))
    det_row, det_truth = a.rows_of(a.det["obj"].view), a.det["truth"].view
    assert np.all(det_truth == a.truth[det_row])
    assert abs(a.n_objects - np.unique(det_truth).size) <= 2
