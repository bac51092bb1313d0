"""The second light-curve generator (redback's physical models): balanced, deterministic,
offline, and physically what a reader expects (docs/classifier.md, "An independent
generator: redback"). Needs the `generators` extra (redback), which make test installs."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from observatory.taxonomy import CLASSES, VARIABLES
from policies.lightcurve_sets import make_redback_set
from simulator import redback_curves as rc

COVERED = [CLASSES.index(c) for c in rc.redback_classes()]


@pytest.fixture(scope="module")
def random_set():
    return make_redback_set(20, seed=7)


@pytest.fixture(scope="module")
def first_nights():
    return make_redback_set(10, seed=8, first_night_fraction=1.0, survey="sitian")


def _per_object(d, fn, values, init):
    out = np.full(d.n, init, dtype=float)
    fn.at(out, d.obj, values)
    return out


def test_covers_the_explosive_transients_only():
    assert rc.redback_classes() == ("SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN")
    for cls in (*VARIABLES, "CV", "Flare", "uLens"):
        with pytest.raises(ValueError, match="no redback model"):
            rc.sample_params(cls, 1, np.random.default_rng(0))


@pytest.mark.parametrize("fixture, n", [("random_set", 20), ("first_nights", 10)])
def test_every_covered_class_has_the_requested_count(request, fixture, n):
    d = request.getfixturevalue(fixture)
    counts = np.bincount(d.label, minlength=len(CLASSES))
    assert counts[COVERED].tolist() == [n] * len(COVERED)
    assert counts.sum() == n * len(COVERED)
    assert np.bincount(d.obj, minlength=d.n).min() >= 3  # 3+ detections each
    assert np.all(np.diff(d.obj) >= 0)  # sorted by light curve, then time
    same = np.diff(d.obj) == 0
    assert np.all(np.diff(d.mjd)[same] >= 0)


def test_magnitudes_are_finite_and_plausible(random_set):
    d = random_set
    assert np.isfinite(d.mag).all() and np.isfinite(d.err).all()
    assert d.mag.min() > 14.0 and d.mag.max() < 21.8  # peaks 15.5-21.2; the 21.8 cut
    assert np.all(d.err > 0) and np.median(d.err) < 0.2
    bright = _per_object(d, np.minimum, d.mag, np.inf)
    assert 15.0 < np.median(bright) < 21.0


def test_first_night_light_curves_span_under_a_day(first_nights):
    d = first_nights
    assert d.first_night.all()
    span = _per_object(d, np.maximum, d.mjd, -np.inf) - _per_object(d, np.minimum, d.mjd, np.inf)
    assert np.all(span < 1.0)


def test_a_seed_gives_the_same_set_and_no_network_is_needed(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("redback tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    a, b = make_redback_set(4, seed=3), make_redback_set(4, seed=3)
    for name in ("obj", "mjd", "band", "mag", "err", "label", "first_night"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = make_redback_set(4, seed=4)
    assert not np.array_equal(a.mag[:50], c.mag[:50])


def _rest(cls, n, seed, peak=18.0):
    """Sources at r peak ``peak``: params, rest-frame peak times and r at rest days."""
    p = rc.sample_params(cls, n, np.random.default_rng(seed), np.full(n, peak))
    t_peak = p["peak_time"] / (1 + p["z"])

    def r_at(rest_days):
        t = (t_peak + rest_days) * (1 + p["z"])
        return rc.magnitudes(cls, p, np.arange(n), t, np.ones(n, dtype=int))

    return p, t_peak, r_at


def test_peaks_at_the_requested_magnitude_and_nothing_before_explosion():
    p, _, _ = _rest("TDE", 8, 1, peak=20.5)
    np.testing.assert_allclose(p["grid_mag"][:, :, 1].min(axis=1), 20.5, atol=0.15)
    assert np.all(p["z"] > 0)
    idx = np.arange(8)
    assert np.isinf(rc.magnitudes("TDE", p, idx, np.full(8, -1.0), np.ones(8, int))).all()
    assert np.isinf(rc.baseline_magnitudes("TDE", p, idx, np.ones(8, int))).all()


def test_physical_time_scales():
    """An Arnett SN Ia peaks 15-22 rest-frame days after explosion (Firth et al. 2015);
    a kilonova peaks within ~1.5 d and has faded by 2+ mag 5 d later (AT2017gfo); a
    magnetar-powered SLSN rises more slowly and fades more slowly than a SN Ia."""
    _, ia_peak, ia_r = _rest("SNIa", 12, 2)
    assert 15.0 < np.median(ia_peak) < 22.0
    _, kn_peak, kn_r = _rest("KN", 12, 3)
    assert np.all(kn_peak < 1.5)
    assert np.median(kn_r(5.0)) > 18.0 + 2.0
    _, sl_peak, sl_r = _rest("SLSN", 12, 4)
    assert np.median(sl_peak) > 1.5 * np.median(ia_peak)
    assert np.median(sl_r(30.0)) < np.median(ia_r(30.0))


def test_importing_redback_leaves_matplotlib_settings_alone():
    """redback sets a LaTeX paper style when imported; a night report drawn later in the
    same process (the daemon's night jobs) must not need LaTeX."""
    import matplotlib

    before = dict(matplotlib.rcParams)
    rc._model("SNIa")
    assert matplotlib.rcParams["text.usetex"] is False
    assert dict(matplotlib.rcParams) == before
