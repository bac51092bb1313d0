"""The fast ephemerides against astropy and astroplan.

The scheduler never calls astropy in its hot path: it uses ``FieldSky`` (spherical
trigonometry on apparent coordinates) and per-site sun/moon tables. These tests protect
the promise that those agree with a full astropy/astroplan computation to 0.1 deg, so
the limits the brain enforces are the limits on the real sky.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

import observatory.offline  # noqa: F401  (astropy offline before any astropy work)

DATE = "2026-12-15"
N_FIELDS = 200
N_TIMES = 20
TOL_DEG = 0.1


@pytest.fixture(scope="module")
def night_and_sky(config):
    from observatory.sky import FieldGrid
    from observatory.visibility import NightCache

    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    return NightCache(config, grid).get(DATE)


def _observer(site):
    import astropy.units as u
    from astroplan import Observer
    from astropy.coordinates import EarthLocation

    loc = EarthLocation.from_geodetic(site.lon_deg * u.deg, site.lat_deg * u.deg,
                                      site.height_m * u.m)
    return Observer(location=loc, name=site.id, pressure=0 * u.bar)


def _local_noon_unix(site) -> float:
    day = datetime.strptime(DATE, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    return day + 43200.0 - site.lon_deg / 15.0 * 3600.0


@pytest.fixture(scope="module", params=["xl", "lh", "mz"])
def site_case(request, config, night_and_sky):
    """Per site: 200 random fields, 20 random times around its night, and astroplan's
    view of them (alt/az of fields, sun and moon)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    night, sky = night_and_sky
    site = config.site(request.param)
    seed = {"xl": 1, "lh": 2, "mz": 3}[site.id]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(sky.grid.size, N_FIELDS, replace=False))
    dusk, dawn = night.dark[site.id][0][0], night.dark[site.id][-1][1]
    t = np.sort(rng.uniform(dusk - 3600.0, dawn + 3600.0, N_TIMES))
    obs = _observer(site)
    times = Time(t, format="unix", scale="utc")
    targets = SkyCoord(ra=sky.grid.ra_deg[idx] * u.deg, dec=sky.grid.dec_deg[idx] * u.deg)
    altaz = obs.altaz(times, targets, grid_times_targets=True)  # (fields, times)
    return {"site": site, "obs": obs, "idx": idx, "t": t, "times": times,
            "targets": targets, "altaz": altaz, "sun": obs.sun_altaz(times),
            "moon": obs.moon_altaz(times), "night": night, "sky": sky}


def _ours(case, method):
    """FieldSky values as an array (fields, times)."""
    fn = getattr(case["sky"], method)
    return np.stack([fn(case["site"].id, float(t), case["idx"]) for t in case["t"]], axis=1)


def _sep_altaz(alt1, az1, alt2, az2):
    """Separation (deg) of two alt/az positions."""
    a1, z1, a2, z2 = map(np.radians, (alt1, az1, alt2, az2))
    c = np.sin(a1) * np.sin(a2) + np.cos(a1) * np.cos(a2) * np.cos(z1 - z2)
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def _moon_sep(case):
    moon = case["moon"]
    return _sep_altaz(case["altaz"].alt.deg, case["altaz"].az.deg,
                      moon.alt.deg[None, :], moon.az.deg[None, :])


def test_field_altitude_matches_astropy(site_case):
    """FieldSky.alt_deg is astropy's AltAz altitude (no refraction) within 0.1 deg."""
    diff = _ours(site_case, "alt_deg") - site_case["altaz"].alt.deg
    assert np.abs(diff).max() <= TOL_DEG


def test_hour_angle_matches_astropy(site_case):
    """FieldSky.hour_angle_deg is astropy's HADec hour angle within 0.1 deg."""
    import astropy.units as u
    from astropy.coordinates import HADec

    case = site_case
    frame = HADec(obstime=case["times"][None, :], location=case["obs"].location,
                  pressure=0 * u.bar)
    ha = case["targets"][:, None].transform_to(frame).ha.deg
    diff = (_ours(case, "hour_angle_deg") - ha + 180.0) % 360.0 - 180.0
    assert np.abs(diff).max() <= TOL_DEG


def test_moon_separation_matches_astroplan(site_case):
    """FieldSky.moon_sep_deg is the field-moon separation seen from the site (astroplan's
    moon_altaz against the fields' alt/az) within 0.1 deg."""
    diff = _ours(site_case, "moon_sep_deg") - _moon_sep(site_case)
    assert np.abs(diff).max() <= TOL_DEG


def test_sun_and_moon_altitude_match_astroplan(site_case):
    """The per-site sun and moon altitude tables agree with astroplan within 0.1 deg."""
    eph = site_case["night"].sites[site_case["site"].id]
    t = site_case["t"]
    assert np.abs(eph.sun_alt(t) - site_case["sun"].alt.deg).max() <= TOL_DEG
    assert np.abs(eph.moon_alt(t) - site_case["moon"].alt.deg).max() <= TOL_DEG


@pytest.mark.filterwarnings("ignore::astropy.coordinates.NonRotationTransformationWarning")
def test_constraints_agree_with_astroplan(site_case, config):
    """Our limits (altitude >= 30, sun <= -18, moon >= 30 deg away) give the same yes/no
    as astroplan's AltitudeConstraint, AtNightConstraint.twilight_astronomical and
    MoonSeparationConstraint, except within 0.1 deg of a threshold; and every kind of
    answer occurs in the sample, so the comparison is not vacuous."""
    import astropy.units as u
    from astroplan import AltitudeConstraint, AtNightConstraint, MoonSeparationConstraint

    case = site_case
    lim = config.limits
    site = case["site"].id
    eph = case["night"].sites[site]
    kw = {"grid_times_targets": True}
    theirs_alt = AltitudeConstraint(min=lim.min_alt_deg * u.deg)(
        case["obs"], case["targets"], times=case["times"], **kw)
    theirs_night = AtNightConstraint.twilight_astronomical()(
        case["obs"], case["targets"], times=case["times"], **kw)
    theirs_moon = MoonSeparationConstraint(min=lim.min_moon_sep_deg * u.deg)(
        case["obs"], case["targets"], times=case["times"], **kw)

    alt_ref = case["altaz"].alt.deg
    sun_ref = np.broadcast_to(case["sun"].alt.deg[None, :], alt_ref.shape)
    moon_ref = _moon_sep(case)
    ours_alt = _ours(case, "alt_deg") >= lim.min_alt_deg
    ours_night = np.broadcast_to((eph.sun_alt(case["t"]) <= lim.max_sun_alt_deg)[None, :],
                                 alt_ref.shape)
    ours_moon = _ours(case, "moon_sep_deg") >= lim.min_moon_sep_deg

    for name, ours, theirs, ref, level in (
            ("altitude", ours_alt, theirs_alt, alt_ref, lim.min_alt_deg),
            ("night", ours_night, theirs_night, sun_ref, lim.max_sun_alt_deg),
            ("moon", ours_moon, theirs_moon, moon_ref, lim.min_moon_sep_deg)):
        assert theirs.shape == ours.shape, name
        clear = np.abs(ref - level) > TOL_DEG
        mismatch = (ours != theirs) & clear
        assert not mismatch.any(), f"{name}: {int(mismatch.sum())} disagreements"
        assert theirs[clear].any() and not theirs[clear].all(), f"{name}: one-sided sample"


def test_dark_interval_matches_astroplan_twilight(site_case, config):
    """The night's dark interval at each site runs from astroplan's evening to morning
    astronomical twilight, within 2 minutes."""
    from astropy.time import Time

    case = site_case
    obs = case["obs"]
    dark = case["night"].dark[case["site"].id]
    assert len(dark) == 1
    noon = Time(_local_noon_unix(case["site"]), format="unix", scale="utc")
    evening = obs.twilight_evening_astronomical(noon, which="next", n_grid_points=1000)
    morning = obs.twilight_morning_astronomical(noon, which="next", n_grid_points=1000)
    assert abs(dark[0][0] - evening.unix) <= 120.0
    assert abs(dark[-1][1] - morning.unix) <= 120.0


def test_all_dark_interval_is_the_overlap(night_and_sky):
    """The all-sites-dark span (the coverage windows' span) is the overlap of the
    sites' dark intervals, and is several hours long in December."""
    night, _sky = night_and_sky
    lo, hi = night.all_dark_interval()
    assert lo == max(iv[0][0] for iv in night.dark.values())
    assert hi == min(iv[-1][1] for iv in night.dark.values())
    assert 6 * 3600 < hi - lo < 14 * 3600
    assert night.t_begin < lo < hi < night.t_end
