"""Mount kinematics (trapezoid velocity profile) and the limiting-magnitude model.

These decide how many fields a group can reach per night and how deep each exposure
goes; the tests pin their physics rather than particular numbers of the scheduler.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from observatory.depth import limiting_mag
from observatory.mount import move_time_s, peak_rate_deg_s, slew_time_s


# Mount ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mount(config):
    return config.mount


def test_mount_is_the_contract_mount(mount):
    """The default mount: 5 deg/s, 2 deg/s^2, 3 s settle (docs/contracts.md)."""
    assert (mount.max_rate_deg_s, mount.accel_deg_s2, mount.settle_s) == (5.0, 2.0, 3.0)


def test_short_moves_are_triangles(mount):
    """Below v^2/a (12.5 deg) the mount never reaches top speed: t = 2 sqrt(d / a)."""
    d = np.array([0.01, 0.5, 3.464, 6.0, 12.0, 12.49])
    np.testing.assert_allclose(slew_time_s(d, mount), 2 * np.sqrt(d / mount.accel_deg_s2),
                               rtol=1e-12)
    np.testing.assert_allclose(peak_rate_deg_s(d, mount), np.sqrt(d * mount.accel_deg_s2),
                               rtol=1e-12)


def test_long_moves_cruise(mount):
    """Above v^2/a the mount cruises at 5 deg/s: t = d / v + v / a."""
    v, a = mount.max_rate_deg_s, mount.accel_deg_s2
    d = np.array([12.5, 13.0, 30.0, 90.0, 180.0])
    np.testing.assert_allclose(slew_time_s(d, mount), d / v + v / a, rtol=1e-12)
    np.testing.assert_allclose(peak_rate_deg_s(d, mount), v)


def test_profile_is_continuous_and_increasing(mount):
    """No jump where the triangle becomes a trapezoid, and farther is never faster."""
    d_switch = mount.max_rate_deg_s ** 2 / mount.accel_deg_s2
    below = float(slew_time_s(d_switch * (1 - 1e-9), mount))
    at = float(slew_time_s(d_switch, mount))
    assert at == pytest.approx(2 * mount.max_rate_deg_s / mount.accel_deg_s2)
    assert abs(at - below) < 1e-6
    d = np.linspace(0, 180, 20001)
    t = slew_time_s(d, mount)
    assert np.all(np.diff(t) > 0)
    assert float(slew_time_s(0.0, mount)) == 0.0


def test_peak_rate_never_exceeds_the_limit(mount):
    """Whatever the move, the mount never turns faster than 5 deg/s, and the time is
    at least what moving at 5 deg/s would take."""
    d = np.random.default_rng(5).uniform(0, 180, 5000)
    assert peak_rate_deg_s(d, mount).max() <= mount.max_rate_deg_s
    assert np.all(slew_time_s(d, mount) >= d / mount.max_rate_deg_s)


def test_move_adds_settle_only_when_moving(mount):
    """A move costs slew + 3 s settle; staying put costs nothing."""
    assert float(move_time_s(0.0, mount)) == 0.0
    for d in (0.1, 3.464, 50.0):
        assert float(move_time_s(d, mount)) == pytest.approx(
            float(slew_time_s(d, mount)) + mount.settle_s)


# Depth ---------------------------------------------------------------------------------
REF = {"alt_deg": 90.0, "moon_alt_deg": -20.0, "moon_sep_deg": 90.0,
       "moon_phase_angle_deg": 90.0, "seeing_zenith_arcsec": 1.0, "cloud": 0.0,
       "exposure_s": 30.0}


def _m5(depth, band, **changes):
    args = dict(REF, **changes)
    return np.asarray(limiting_mag(depth, band, args["alt_deg"], args["moon_alt_deg"],
                                   args["moon_sep_deg"], args["moon_phase_angle_deg"],
                                   args["seeing_zenith_arcsec"], args["cloud"],
                                   args["exposure_s"]), dtype=float)


@pytest.mark.parametrize("band", ["g", "r", "i"])
def test_reference_conditions_give_the_configured_depth(config, band):
    """Zenith, dark sky (moon down), 1.0" seeing, 30 s: exactly the configured m5
    (20.8 / 20.6 / 20.2)."""
    assert float(_m5(config.depth, band)) == pytest.approx(
        config.depth.m5_zenith_dark[band], abs=1e-9)
    assert config.depth.m5_zenith_dark == {"g": 20.8, "r": 20.6, "i": 20.2}


def _strictly_decreasing(x):
    return bool(np.all(np.diff(x) < 0))


@pytest.mark.parametrize("band", ["g", "r", "i"])
def test_worse_conditions_make_it_shallower(config, band):
    """A brighter moon, a higher airmass, worse seeing and more cloud each make the
    limit shallower (strictly monotonic), and a moon below the horizon costs nothing."""
    d = config.depth
    up = {"moon_alt_deg": 40.0, "moon_sep_deg": 60.0}
    # Phase angle 180 (new) -> 0 (full): brighter moon.
    assert _strictly_decreasing(_m5(d, band, moon_phase_angle_deg=np.linspace(170, 0, 12),
                                    **up))
    assert _strictly_decreasing(_m5(d, band, moon_alt_deg=np.linspace(1, 80, 12),
                                    moon_sep_deg=60.0, moon_phase_angle_deg=30.0))
    assert float(_m5(d, band, moon_phase_angle_deg=0.0, moon_alt_deg=-5.0)) == pytest.approx(
        d.m5_zenith_dark[band], abs=1e-9)
    assert _strictly_decreasing(_m5(d, band, alt_deg=np.linspace(90, 20, 15)))
    assert float(_m5(d, band, alt_deg=30.0)) < float(_m5(d, band))
    assert _strictly_decreasing(_m5(d, band, seeing_zenith_arcsec=np.linspace(0.5, 3, 11)))
    assert _strictly_decreasing(_m5(d, band, cloud=np.linspace(0, 1, 11)))
    assert float(_m5(d, band, cloud=1.0)) == pytest.approx(
        d.m5_zenith_dark[band] - d.cloud_extinction_mag)


def test_moonlight_hurts_blue_most(config):
    """Moonlight is bluer than the dark sky: it costs more depth in g than in i."""
    d = config.depth
    cost = {b: float(_m5(d, b) - _m5(d, b, moon_alt_deg=45.0, moon_sep_deg=45.0,
                                     moon_phase_angle_deg=10.0)) for b in "gri"}
    assert cost["g"] > cost["r"] > cost["i"] > 0


@pytest.mark.parametrize("ratio", [0.5, 2.0, 4.0, 10.0])
def test_longer_exposure_goes_deeper(config, ratio):
    """Background-limited depth scales as 1.25 log10 of the exposure-time ratio."""
    d = config.depth
    for band in "gri":
        gain = float(_m5(d, band, exposure_s=30.0 * ratio) - _m5(d, band))
        assert gain == pytest.approx(1.25 * math.log10(ratio), abs=1e-9)
