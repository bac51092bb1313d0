"""The data flywheel end to end on a small set: a run's spectroscopic labels go into
training and the classifier is scored with and without them on a held-out sky (another
run's sources against the simulator's truth) and a held-out simulated set."""

from __future__ import annotations

import numpy as np
import pytest

from brain.evaluation.flywheel import equal_labels, run_flywheel, sky_set
from observatory.taxonomy import CLASSES


@pytest.mark.slow
def test_labels_do_not_lower_the_score_on_a_held_out_sky(clear_run, climate_run):
    labels, k = equal_labels({"rl": clear_run})
    assert k > 0 and labels["rl"].n == k
    report = run_flywheel({"rl": clear_run}, sky=climate_run, n_per_class=150,
                          test_per_class=60, generators=("ours",), weights=(5.0,))
    assert report["labels_per_policy"] == k
    with_labels, none = report["rl@5"], report["none"]
    assert with_labels["n_labelled"] == k
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
