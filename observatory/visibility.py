"""Vectorised altitude, airmass and moon separation of survey fields for one night."""

from __future__ import annotations

import math

import numpy as np

from observatory.arrayconfig import ArrayConfig
from observatory.ephemeris import NightEphemeris, apparent_coords
from observatory.sky import FieldGrid


class FieldSky:
    """The field grid seen on one night: apparent coordinates, precomputed trig.

    Every method takes field indices (or ``None`` for all fields) and times in Unix
    seconds, scalar or one per field.
    """

    def __init__(self, grid: FieldGrid, night: NightEphemeris):
        self.grid = grid
        self.night = night
        mid = 0.5 * (night.t_begin + night.t_end)
        ra, dec = apparent_coords(grid.ra_deg, grid.dec_deg, mid)
        self.ra_app_deg = ra
        self.dec_app_deg = dec
        self.sin_dec = np.sin(np.radians(dec))
        self.cos_dec = np.cos(np.radians(dec))
        self.grid_xyz = grid.xyz  # ICRS unit vectors: mount moves are computed on these
        self.xyz_app = np.stack([self.cos_dec * np.cos(np.radians(ra)),
                                 self.cos_dec * np.sin(np.radians(ra)), self.sin_dec], -1)
        self._lat = {k: (np.sin(e.lat_rad), np.cos(e.lat_rad)) for k, e in night.sites.items()}

    def _sel(self, arr, idx):
        return arr if idx is None else arr[idx]

    def sin_alt(self, site: str, t_unix, idx=None) -> np.ndarray:
        eph = self.night.sites[site]
        sl, cl = self._lat[site]
        ha = np.radians(eph.lst_deg(t_unix) - self._sel(self.ra_app_deg, idx))
        return sl * self._sel(self.sin_dec, idx) + cl * self._sel(self.cos_dec, idx) * np.cos(ha)

    def alt_deg(self, site: str, t_unix, idx=None) -> np.ndarray:
        return np.degrees(np.arcsin(np.clip(self.sin_alt(site, t_unix, idx), -1, 1)))

    def hour_angle_deg(self, site: str, t_unix, idx=None) -> np.ndarray:
        eph = self.night.sites[site]
        return (eph.lst_deg(t_unix) - self._sel(self.ra_app_deg, idx) + 180.0) % 360.0 - 180.0

    def moon_sep_deg(self, site: str, t_unix, idx=None) -> np.ndarray:
        moon = self.night.sites[site].moon_vec(t_unix)
        xyz = self._sel(self.xyz_app, idx)
        dot = np.sum(xyz * moon, axis=-1) if moon.ndim == 2 else xyz @ moon
        return np.degrees(np.arccos(np.clip(dot, -1, 1)))


def airmass(alt_deg) -> np.ndarray:
    """Plane-parallel airmass sec(z) (astroplan's convention); inf below the horizon."""
    s = np.sin(np.radians(alt_deg))
    return np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), np.inf)


def target_alt_deg(eph, ra_deg, dec_deg, t_unix) -> np.ndarray:
    """Altitude (deg) of ICRS targets seen from a site's ephemeris at ``t_unix``.

    Uses J2000 coordinates against the apparent sidereal time: the precession since
    J2000 (under 0.4 deg) is smaller than the 0.5 deg margin the brain keeps."""
    lat = eph.lat_rad
    if np.ndim(ra_deg) == 0 and np.ndim(dec_deg) == 0 and np.ndim(t_unix) == 0:
        # one target at one time (the safety guard, for every slew): plain floats
        dec = math.radians(dec_deg)
        ha = math.radians(float(eph.lst_deg(t_unix)) - ra_deg)
        s = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(ha)
        return math.degrees(math.asin(min(1.0, max(-1.0, s))))
    dec = np.radians(dec_deg)
    ha = np.radians(eph.lst_deg(t_unix) - np.asarray(ra_deg))
    s = math.sin(lat) * np.sin(dec) + math.cos(lat) * np.cos(dec) * np.cos(ha)
    return np.degrees(np.arcsin(np.clip(s, -1, 1)))


class NightCache:
    """Ephemerides and field geometry per night, computed once (about a second)."""

    def __init__(self, config: ArrayConfig, grid, keep: int = 2):
        self.config = config
        self.grid = grid
        self.keep = keep
        self._nights: dict[str, tuple[NightEphemeris, object]] = {}

    def get(self, date: str):
        if date not in self._nights:
            self.put(date, self.compute(date))
        return self._nights[date]

    def compute(self, date: str):
        """A night's entry, computed and not stored: safe on another thread (the daemon
        computes tomorrow's off its loop, then :meth:`put` s it there)."""
        night = NightEphemeris.compute(self.config, date)
        return night, FieldSky(self.grid, night)

    def put(self, date: str, entry) -> None:
        self._nights[date] = entry
        while len(self._nights) > self.keep:
            self._nights.pop(next(iter(self._nights)))

    def __contains__(self, date: str) -> bool:
        return date in self._nights
