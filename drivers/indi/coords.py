"""ICRS and the epoch-of-date coordinates of INDI's ``EQUATORIAL_EOD_COORD``
(docs/indi.md, "Coordinates").

The brain works in ICRS (J2000) everywhere. An INDI mount takes and reports "JNow": the
geocentric apparent place on the true equator and equinox of date (precession, nutation,
annual aberration and the Sun's light deflection; no refraction, no diurnal aberration),
which is astropy's :class:`~astropy.coordinates.TETE` frame at the geocentre. Not
``CIRS``: its right ascension counts from the celestial intermediate origin, not the
equinox, and differs from INDI's by the equation of the origins (about 21 arcminutes in
2026). Not topocentric: INDI's own J2000/JNow conversion takes no observer, and the site
would only add the diurnal aberration (under 0.3 arcseconds), so the site is left to
altitude and azimuth (``drivers/indi/sky.py``).

Astropy's ``Time`` stays in here: callers pass Unix seconds (world time). One conversion
costs a few milliseconds; the bridge makes one per slew and one per state report.
"""

from __future__ import annotations

import astropy.units as u
from astropy.coordinates import ICRS, TETE
from astropy.time import Time

from observatory import offline  # noqa: F401  (astropy offline before any conversion)


def _ra(deg: float) -> float:
    ra = float(deg) % 360.0
    return 0.0 if ra >= 360.0 else ra  # -1e-17 % 360 is 360.0


def _time(t_unix: float) -> Time:
    return Time(float(t_unix), format="unix", scale="utc")


def icrs_to_eod(ra_deg: float, dec_deg: float, t_unix: float) -> tuple[float, float]:
    """ICRS (degrees) to INDI's epoch of date at ``t_unix`` (Unix seconds, UTC): the
    ``EQUATORIAL_EOD_COORD`` right ascension and declination, in degrees."""
    eod = ICRS(ra=float(ra_deg) * u.deg, dec=float(dec_deg) * u.deg).transform_to(
        TETE(obstime=_time(t_unix)))
    return _ra(eod.ra.deg), float(eod.dec.deg)


def eod_to_icrs(ra_deg: float, dec_deg: float, t_unix: float) -> tuple[float, float]:
    """INDI's epoch of date at ``t_unix`` (degrees; a mount's ``EQUATORIAL_EOD_COORD``)
    to ICRS right ascension and declination, in degrees."""
    dec = max(-90.0, min(90.0, float(dec_deg)))  # a mount at the pole may overshoot it
    icrs = TETE(ra=float(ra_deg) * u.deg, dec=dec * u.deg,
                obstime=_time(t_unix)).transform_to(ICRS())
    return _ra(icrs.ra.deg), float(icrs.dec.deg)
