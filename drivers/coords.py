"""ICRS (the brain's) and the equatorial systems mounts take and report (docs/indi.md
and docs/alpaca.md, "Coordinates"). Shared by the INDI and the ASCOM Alpaca bridges.

The brain works in ICRS (J2000) everywhere. A mount speaks one of:

* ``jnow``: the geocentric apparent place on the true equator and equinox of date
  (precession, nutation, annual aberration and the Sun's light deflection; no
  refraction, no diurnal aberration). INDI's ``EQUATORIAL_EOD_COORD`` ("JNow") and
  ASCOM's ``equTopocentric`` are this; it is astropy's :class:`~astropy.coordinates.TETE`
  frame at the geocentre. Not ``CIRS``: its right ascension counts from the celestial
  intermediate origin, not the equinox, and differs by the equation of the origins
  (about 21 arcminutes in 2026). Not topocentric in astropy's sense: the site would only
  add the diurnal aberration (under 0.3 arcseconds), so it is left to altitude and
  azimuth (``drivers/sky.py``);
* ``j2000``: ICRS as it is (FK5 J2000 differs from ICRS by under 0.03 arcseconds);
* ``j2050``: the mean equator and equinox of J2050 (FK5);
* ``b1950``: the mean equator and equinox of B1950 (FK4).

Astropy's ``Time`` stays in here: callers pass Unix seconds (world time). One conversion
costs a few milliseconds; a bridge makes one per slew and one per state report.
"""

from __future__ import annotations

import astropy.units as u
from astropy.coordinates import FK4, FK5, ICRS, TETE
from astropy.time import Time

from observatory import offline  # noqa: F401  (astropy offline before any conversion)

SYSTEMS = ("jnow", "j2000", "j2050", "b1950")
_MEAN = {"j2050": lambda: FK5(equinox=Time("J2050")),
         "b1950": lambda: FK4(equinox=Time("B1950"))}


def _ra(deg: float) -> float:
    ra = float(deg) % 360.0
    return 0.0 if ra >= 360.0 else ra  # -1e-17 % 360 is 360.0


def _time(t_unix: float) -> Time:
    return Time(float(t_unix), format="unix", scale="utc")


def icrs_to_eod(ra_deg: float, dec_deg: float, t_unix: float) -> tuple[float, float]:
    """ICRS (degrees) to the epoch of date ("JNow") at ``t_unix`` (Unix seconds, UTC):
    INDI's ``EQUATORIAL_EOD_COORD`` right ascension and declination, in degrees."""
    eod = ICRS(ra=float(ra_deg) * u.deg, dec=float(dec_deg) * u.deg).transform_to(
        TETE(obstime=_time(t_unix)))
    return _ra(eod.ra.deg), float(eod.dec.deg)


def eod_to_icrs(ra_deg: float, dec_deg: float, t_unix: float) -> tuple[float, float]:
    """The epoch of date at ``t_unix`` (degrees; a mount's ``EQUATORIAL_EOD_COORD``)
    to ICRS right ascension and declination, in degrees."""
    dec = max(-90.0, min(90.0, float(dec_deg)))  # a mount at the pole may overshoot it
    icrs = TETE(ra=float(ra_deg) * u.deg, dec=dec * u.deg,
                obstime=_time(t_unix)).transform_to(ICRS())
    return _ra(icrs.ra.deg), float(icrs.dec.deg)


def icrs_to_mount(ra_deg: float, dec_deg: float, t_unix: float,
                  system: str) -> tuple[float, float]:
    """ICRS (degrees) to a mount's ``system`` (one of :data:`SYSTEMS`) at ``t_unix``."""
    if system == "jnow":
        return icrs_to_eod(ra_deg, dec_deg, t_unix)
    if system == "j2000":
        return _ra(ra_deg), float(dec_deg)
    out = ICRS(ra=float(ra_deg) * u.deg, dec=float(dec_deg) * u.deg).transform_to(
        _MEAN[system]())
    return _ra(out.ra.deg), float(out.dec.deg)


def mount_to_icrs(ra_deg: float, dec_deg: float, t_unix: float,
                  system: str) -> tuple[float, float]:
    """A mount's position in ``system`` (degrees) at ``t_unix`` to ICRS, in degrees."""
    dec = max(-90.0, min(90.0, float(dec_deg)))
    if system == "jnow":
        return eod_to_icrs(ra_deg, dec, t_unix)
    if system == "j2000":
        return _ra(ra_deg), dec
    frame = _MEAN[system]()
    icrs = frame.realize_frame(
        ICRS(ra=float(ra_deg) * u.deg, dec=dec * u.deg).data).transform_to(ICRS())
    return _ra(icrs.ra.deg), float(icrs.dec.deg)
