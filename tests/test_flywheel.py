"""The data flywheel end to end on a small set: a run's spectroscopic labels go into
training and the classifier is scored with and without them on a held-out sky (another
run's sources against the simulator's truth) and a held-out simulated set."""

from __future__ import annotations

import numpy as np
import pytest

from brain.evaluation.flywheel import equal_labels, run_flywheel, sky_set
from observatory.taxonomy import CLASSES
from policies.classifier_training import LABEL_SHARE_CAP, label_views, label_weights
from policies.lightcurve_io import LabelledSet


@pytest.mark.slow
def test_labels_do_not_lower_the_score_on_a_held_out_sky(clear_run, climate_run):
    labels, k = equal_labels({"rl": clear_run})
    assert k > 0 and labels["rl"].n == k
    report = run_flywheel({"rl": clear_run}, sky=climate_run, n_per_class=150,
                          test_per_class=60, generators=("ours",), weights=(5.0,),
                          fit_seeds=(1, 2, 3))
    assert report["labels_per_policy"] == k
    with_labels, none = report["rl@5"], report["none"]
    assert with_labels["n_labelled"] == k
    assert len(with_labels["sky"]["full"]["macro_f1_seeds"]) == 3
    for part in ("full", "first_night"):
        assert with_labels["sky"][part]["macro_f1"] >= none["sky"][part]["macro_f1"]
    assert set(report["tests"]) == {"ours", "sky"}


def test_sky_set_holds_a_runs_true_sources(clear_run):
    d = sky_set(clear_run, per_class=20)
    assert d.n > 0 and d.label.size == d.n
    assert set(np.unique(d.label)) <= set(range(len(CLASSES)))
    assert np.all(np.diff(d.obj) >= 0)
    counts = np.bincount(d.obj, minlength=d.n)
    assert counts.min() >= 3
    # First nights: within 0.6 d of their first detection.
    t0 = np.full(d.n, np.inf)
    np.minimum.at(t0, d.obj, d.mjd)
    fn = d.first_night[d.obj]
    assert np.all(d.mjd[fn] - t0[d.obj[fn]] < 0.6)


def test_labels_change_what_a_class_looks_like_not_how_common_it_is():
    # 100 simulated light curves of classes 0 and 1, 10 of class 2; labels: 12 of class 0
    # (many: capped at LABEL_SHARE_CAP of the class), 2 of class 1, 1 of class 3 (no
    # simulations).
    sim = np.repeat([0, 1, 2], [100, 100, 10])
    lab = np.array([0] * 12 + [1] * 2 + [3])
    y = np.concatenate([sim, lab])
    w = label_weights(y, lab.size, 5.0)
    for k, total in ((0, 100), (1, 100), (2, 10)):
        assert np.isclose(w[y == k].sum(), total)  # each class keeps its weight
    n = sim.size
    cap = LABEL_SHARE_CAP * 100
    assert 10 < cap < 60  # 12 x 5 is over the cap, 2 x 5 under it
    assert np.allclose(w[n:n + 12], cap / 12) and np.allclose(w[:100], (100 - cap) / 100)
    assert np.allclose(w[n + 12:n + 14], 5.0) and np.allclose(w[100:200], 90 / 100)
    assert np.allclose(w[200:210], 1.0)
    assert w[-1] == 5.0  # a class the simulations lack: the label's weight as given
    assert np.all(w > 0)
    half = label_weights(y, lab.size, 5.0, share_cap=0.5)  # a cap given: 12 x 5 > 50
    assert np.allclose(half[n:n + 12], 50 / 12) and np.allclose(half[:100], 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        label_weights(y, lab.size, 5.0, share_cap=1.5)  # would weigh simulations below 0


def test_a_spectrum_labels_the_first_night_of_its_light_curve_too():
    # Object 0: four detections on its first night, two more on later nights (class 3);
    # object 1: three detections, all on its first night (class 5); object 2: two on
    # its first night, then more (class 7; its first night alone is too short).
    obj = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    mjd = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 2.0, 5.0, 5.1, 5.2, 9.0, 9.1, 10.0, 11.0])
    s = LabelledSet(obj, mjd, np.zeros(13, int), np.linspace(18, 19, 13), np.full(13, 0.05),
                    np.array([3, 5, 7]))
    v = label_views(s, spans=(0.6,), windows=0)
    assert v.n == 4 and list(v.label) == [3, 5, 7, 3]  # the three, then 0's first night
    assert np.array_equal(v.mjd[v.obj == 3], mjd[:4])
    assert np.array_equal(v.mjd[v.obj < 3], mjd) and np.all(np.diff(v.obj) >= 0)
    assert label_views(s, spans=(), windows=0).n == 3


def test_a_spectrum_labels_windows_of_its_light_curve_a_few_nights_long():
    # Two objects observed every 0.05 d for 6 d (class 4) and 0.5 d (class 9): the long
    # one also trains as windows 0.5-2.5 d long from anywhere in it; the short one has no
    # window that drops a detection, so it trains whole (and on no first-night cut).
    t = np.arange(0, 6, 0.05)
    obj = np.concatenate([np.zeros(t.size, int), np.ones(10, int)])
    mjd = np.concatenate([t, 10 + t[:10]])
    s = LabelledSet(obj, mjd, obj % 2, np.linspace(17, 19, mjd.size), np.full(mjd.size, 0.05),
                    np.array([4, 9]))
    v = label_views(s, spans=(0.6,), windows=5, window_d=(0.5, 2.5), seed=3)
    assert v.n == 2 + 1 + 5 and list(v.label) == [4, 9] + [4] * 6
    assert np.all(np.diff(v.obj) >= 0) and np.array_equal(v.mjd[v.obj < 2], mjd)
    for k in range(3, v.n):  # each window: a stretch of object 0's detections
        w = v.mjd[v.obj == k]
        assert 0.45 <= w[-1] - w[0] < 2.5 and np.isin(w, t).all()
        assert np.allclose(np.diff(w), 0.05)
    starts = {round(float(v.mjd[v.obj == k][0]), 2) for k in range(3, v.n)}
    assert len(starts) > 1  # from anywhere in the light curve, not only its start
    again = label_views(s, spans=(0.6,), windows=5, window_d=(0.5, 2.5), seed=3)
    assert np.array_equal(again.mjd, v.mjd) and np.array_equal(again.obj, v.obj)
