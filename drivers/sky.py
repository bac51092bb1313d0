"""Sky helpers of the hardware bridges (INDI, ASCOM Alpaca): sidereal time, altitude and
azimuth of the epoch-of-date pointing a mount reports, the brain's airmass, and the
nominal depth and seeing an exposure result reports."""

from __future__ import annotations

import math

from observatory import visibility


def lst_deg(t_unix: float, lon_east_deg: float) -> float:
    """Local mean sidereal time (degrees) from GMST (IAU 1982, good to ~0.1 s)."""
    d = t_unix / 86400.0 + 2440587.5 - 2451545.0
    return (280.46061837 + 360.98564736629 * d + lon_east_deg) % 360.0


def alt_az_deg(ra_deg: float, dec_deg: float, lat_deg: float, lst: float) -> tuple[float, float]:
    """Altitude and azimuth (north through east), degrees."""
    h = math.radians(lst - ra_deg)
    dec, lat = math.radians(dec_deg), math.radians(lat_deg)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(h)
    alt = math.asin(max(-1.0, min(1.0, sin_alt)))
    az = math.atan2(-math.cos(dec) * math.sin(h),
                    math.sin(dec) * math.cos(lat) - math.cos(dec) * math.sin(lat) * math.cos(h))
    return math.degrees(alt), math.degrees(az) % 360.0


def airmass(alt_deg: float) -> float:
    """The brain's airmass (:func:`observatory.visibility.airmass`, sec z), capped at 40
    so that it stays a finite number on the wire (and 40 at and below the horizon)."""
    return min(40.0, float(visibility.airmass(alt_deg)))


def ra_diff_h(a: float, b: float) -> float:
    return abs((a - b + 12.0) % 24.0 - 12.0)


def nominal_quality(alt_deg: float | None, seconds: float, limiting_mag: float,
                    ref_seconds: float, seeing_arcsec: float,
                    extinction: float = 0.2) -> dict:
    """An exposure result's ``airmass``, ``seeing_arcsec`` and ``limiting_mag`` from the
    pointing's altitude (None: unknown, airmass 40): the nominal zenith depth for
    ``ref_seconds`` scaled by 1.25 log10(seconds / ref_seconds) less ``extinction`` per
    airmass above 1, and the zenith seeing times airmass^0.6 (docs/indi.md, "Command
    mapping")."""
    am = airmass(alt_deg) if alt_deg is not None else 40.0
    lim = (limiting_mag + 1.25 * math.log10(seconds / ref_seconds) - extinction * (am - 1.0))
    return {"limiting_mag": round(lim, 3), "seeing_arcsec": round(seeing_arcsec * am ** 0.6, 3),
            "airmass": round(am, 4)}


def slew_eta(here: dict | None, ra_deg: float, dec_deg: float, now: float,
             timeout_s: float) -> float:
    """When a slew from ``here`` (a pointing with ``ra_deg``, ``dec_deg``; None: unknown)
    should be over: conservatively 0.5 deg/s plus 30 s (PROGRESS only ever extends the
    brain's deadline), at most ``timeout_s``."""
    dist = 180.0 if not here else max(ra_diff_h(here["ra_deg"] / 15.0, ra_deg / 15.0) * 15.0,
                                      abs(here["dec_deg"] - dec_deg))
    return now + min(timeout_s, 30.0 + 2.0 * dist)
