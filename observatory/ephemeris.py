"""Per-night, per-site ephemerides computed once with astropy, then interpolated.

The hot path never touches astropy: sun altitude, moon position and sidereal time sit
on a one-minute grid; field altitudes come from spherical trigonometry on apparent
(true-equator, true-equinox of date) coordinates with the apparent local sidereal time,
which agrees with astropy's full AltAz transform to a few arcseconds (no refraction,
as astroplan's default of zero pressure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from observatory import offline  # noqa: F401  (configures astropy before use)
from observatory.arrayconfig import ArrayConfig, Site

SIDEREAL_RATE_DEG_S = 360.98564736629 / 86400.0
GRID_S = 60.0


def _astropy():
    import astropy.units as u  # lazy: heavy optional library
    from astropy.coordinates import (  # lazy: heavy optional library
        TETE,
        AltAz,
        EarthLocation,
        SkyCoord,
        get_body,
    )
    from astropy.time import Time  # lazy: heavy optional library

    return u, TETE, AltAz, EarthLocation, SkyCoord, get_body, Time


def location(site: Site):
    u, *_rest, EarthLocation, _sc, _gb, _t = _astropy()
    return EarthLocation.from_geodetic(site.lon_deg * u.deg, site.lat_deg * u.deg,
                                       site.height_m * u.m)


def night_noon_unix(date: str, site: Site) -> float:
    """Unix time (s) of local mean noon at ``site`` on ``date`` (YYYY-MM-DD): the start
    of that date's night."""

    day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    return day + 43200.0 - site.lon_deg / 15.0 * 3600.0


@dataclass
class SiteEphemeris:
    """One site's sun, moon and sidereal time over a span, on a ``GRID_S`` grid."""

    site: Site
    t_unix: np.ndarray
    sun_alt_deg: np.ndarray
    moon_alt_deg: np.ndarray
    moon_xyz: np.ndarray  # apparent topocentric unit vectors (n, 3)
    moon_phase_angle_deg: np.ndarray
    lst0_deg: float  # apparent local sidereal time at t_unix[0]
    _moon_cache: dict = field(default_factory=dict, repr=False, compare=False)
    _dark_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def lat_rad(self) -> float:
        return math.radians(self.site.lat_deg)

    def lst_deg(self, t_unix):
        return (self.lst0_deg + SIDEREAL_RATE_DEG_S * (np.asarray(t_unix) - self.t_unix[0])) % 360

    def sun_alt(self, t_unix):
        return np.interp(t_unix, self.t_unix, self.sun_alt_deg)

    def is_dark(self, t_unix, max_sun_alt_deg: float):
        """Whether the sun is at or below ``max_sun_alt_deg`` at ``t_unix`` (unix s,
        scalar or array): the one "is it dark" rule of the brain."""
        dark = self.sun_alt(t_unix) <= max_sun_alt_deg
        return bool(dark) if np.ndim(dark) == 0 else dark

    def dark_left_s(self, t_unix: float, max_sun_alt_deg: float) -> float:
        """Seconds of darkness (sun at or below ``max_sun_alt_deg``) left after
        ``t_unix`` in the dark interval that holds it; 0 when it is not dark."""
        intervals = self._dark_cache.get(max_sun_alt_deg)
        if intervals is None:
            intervals = self._dark_cache[max_sun_alt_deg] = self.dark_intervals(max_sun_alt_deg)
        for t0, t1 in intervals:
            if t0 <= t_unix < t1:
                return t1 - t_unix
        return 0.0

    def moon_alt(self, t_unix):
        return np.interp(t_unix, self.t_unix, self.moon_alt_deg)

    def moon_phase_angle(self, t_unix):
        return np.interp(t_unix, self.t_unix, self.moon_phase_angle_deg)

    def moon_vec(self, t_unix) -> np.ndarray:
        if np.ndim(t_unix) == 0:
            # The moon moves 0.0014 deg in 10 s: scalar look-ups (many per minute of
            # simulation, at nearly the same instants) share one interpolation.
            key = round(float(t_unix) / 10.0)
            cache = self._moon_cache
            v = cache.get(key)
            if v is None:
                if len(cache) > 50_000:
                    cache.clear()
                v = cache[key] = self._moon_vec(np.array([key * 10.0]))[0]
            return v
        return self._moon_vec(np.atleast_1d(t_unix))

    def _moon_vec(self, t: np.ndarray) -> np.ndarray:
        v = np.stack([np.interp(t, self.t_unix, self.moon_xyz[:, k]) for k in range(3)], -1)
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        return v

    def dark_intervals(self, max_sun_alt_deg: float) -> list[tuple[float, float]]:
        """Intervals (unix s) when the sun is at or below ``max_sun_alt_deg``."""
        dark = self.sun_alt_deg <= max_sun_alt_deg
        out, start = [], None
        for k in range(len(dark)):
            if dark[k] and start is None:
                start = self.t_unix[0] if k == 0 else _cross(self, k - 1, max_sun_alt_deg)
            elif not dark[k] and start is not None:
                out.append((start, _cross(self, k - 1, max_sun_alt_deg)))
                start = None
        if start is not None:
            out.append((start, self.t_unix[-1]))
        return out


def _cross(eph: SiteEphemeris, k: int, level: float) -> float:
    a, b = eph.sun_alt_deg[k], eph.sun_alt_deg[k + 1]
    f = (level - a) / (b - a) if b != a else 0.0
    return float(eph.t_unix[k] + f * (eph.t_unix[k + 1] - eph.t_unix[k]))


def compute_site(site: Site, t0_unix: float, t1_unix: float) -> SiteEphemeris:
    u, TETE, AltAz, _el, _sc, get_body, Time = _astropy()
    t = np.arange(t0_unix, t1_unix + GRID_S, GRID_S)
    times = Time(t, format="unix", scale="utc")
    loc = location(site)
    altaz = AltAz(obstime=times, location=loc)
    sun = get_body("sun", times, location=loc)
    moon = get_body("moon", times, location=loc)
    sun_alt = sun.transform_to(altaz).alt.deg
    moon_alt = moon.transform_to(altaz).alt.deg
    moon_app = moon.transform_to(TETE(obstime=times, location=loc))
    ra, dec = np.radians(moon_app.ra.deg), np.radians(moon_app.dec.deg)
    moon_xyz = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)
    elong = sun.separation(moon).rad
    sun_d = sun.distance.to_value(u.km)
    moon_d = moon.distance.to_value(u.km)
    phase = np.degrees(np.arctan2(sun_d * np.sin(elong), moon_d - sun_d * np.cos(elong)))
    lst0 = times[0].sidereal_time("apparent", longitude=site.lon_deg * u.deg).deg
    return SiteEphemeris(site, t, sun_alt, moon_alt, moon_xyz, phase, float(lst0))


def apparent_coords(ra_deg: np.ndarray, dec_deg: np.ndarray, t_unix: float):
    """ICRS -> apparent (TETE, geocentric) RA/Dec (deg) at ``t_unix``. Precession over
    a night is below an arcsecond, so one epoch per night serves every field."""
    u, TETE, _a, _e, SkyCoord, _g, Time = _astropy()
    c = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    app = c.transform_to(TETE(obstime=Time(t_unix, format="unix", scale="utc")))
    return app.ra.deg, app.dec.deg


@dataclass
class NightEphemeris:
    """Every site's ephemeris for one night, plus the night's limits."""

    date: str
    sites: dict[str, SiteEphemeris]
    t_begin: float  # first site's dusk minus a margin
    t_end: float  # last site's dawn plus a margin
    dark: dict[str, list[tuple[float, float]]]

    @classmethod
    def compute(cls, config: ArrayConfig, date: str, margin_s: float = 900.0) -> NightEphemeris:
        sites, dark = {}, {}
        for s in config.sites:
            noon = night_noon_unix(date, s)
            sites[s.id] = compute_site(s, noon, noon + 86400.0)
            dark[s.id] = sites[s.id].dark_intervals(config.limits.max_sun_alt_deg)
        starts = [iv[0][0] for iv in dark.values() if iv]
        ends = [iv[-1][1] for iv in dark.values() if iv]
        if not starts:
            noon = min(night_noon_unix(date, s) for s in config.sites)
            return cls(date, sites, noon, noon, dark)
        return cls(date, sites, min(starts) - margin_s, max(ends) + margin_s, dark)

    def all_dark_interval(self) -> tuple[float, float] | None:
        """The span when every site is dark (None if there is none)."""
        lo = max((iv[0][0] if iv else math.inf) for iv in self.dark.values())
        hi = min((iv[-1][1] if iv else -math.inf) for iv in self.dark.values())
        return (lo, hi) if hi > lo else None


def _noon_offset_s(config: ArrayConfig) -> float:
    """Seconds from UTC midnight to local mean noon at the array's mean longitude."""
    mean_lon = sum(s.lon_deg for s in config.sites) / len(config.sites)
    return 43200.0 - mean_lon / 15.0 * 3600.0


def night_date(config: ArrayConfig, t_unix: float) -> str:
    """The date (YYYY-MM-DD) whose night contains ``t_unix``: nights run from local mean
    noon to noon at the array's mean longitude."""

    local = t_unix - _noon_offset_s(config)
    return datetime.fromtimestamp(local, tz=UTC).strftime("%Y-%m-%d")


def night_span(config: ArrayConfig, date: str) -> tuple[float, float]:
    """[start, end) in unix s of the night that ``night_date`` calls ``date``."""

    day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    start = day + _noon_offset_s(config)
    return start, start + 86400.0
