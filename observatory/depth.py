"""Limiting magnitude of an exposure: airmass, moonlight, seeing, cloud, exposure time.

Sky brightness from the moon follows Krisciunas & Schaefer (1991, PASP 103, 1033) in V,
scaled per band (moonlight is bluer than the dark sky); the 5-sigma point-source depth
scales as in background-limited imaging (Rubin's m5 formula, Ivezic et al. 2019, ApJ
873, 111, eq. 6): +0.5 per magnitude of darker sky, -2.5 log10 of the seeing ratio,
+1.25 log10 of the exposure ratio, minus extinction times (airmass - 1).
"""

from __future__ import annotations

import numpy as np

from observatory.arrayconfig import Depth
from observatory.visibility import airmass

K_V = 0.172  # V-band extinction (mag/airmass) in K&S's model
B_DARK_V_NL = 34.08 * np.exp(20.7233 - 0.92104 * 21.6)  # 21.6 mag/arcsec^2 in nanoLamberts


def _ks_airmass(zenith_deg):
    """Krisciunas & Schaefer's (1991) airmass, which their sky-brightness model is
    calibrated with (used only inside it); everything else uses
    :func:`observatory.visibility.airmass`."""
    z = np.radians(np.clip(zenith_deg, 0, 90))
    return (1 - 0.96 * np.sin(z) ** 2) ** -0.5


def moon_sky_ratio(alt_deg, moon_alt_deg, moon_sep_deg, moon_phase_angle_deg):
    """Moonlight over the zenith dark sky, in V (K&S 1991 eqs. 15-21); 0 if moon down."""
    alpha = np.abs(moon_phase_angle_deg)
    i_star = 10 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha**4))
    rho = np.radians(np.maximum(moon_sep_deg, 10.0))
    f_rho = 10**5.36 * (1.06 + np.cos(rho) ** 2) + 10 ** (6.15 - np.degrees(rho) / 40)
    x_moon = _ks_airmass(90 - np.maximum(moon_alt_deg, 0))
    x_obj = _ks_airmass(90 - alt_deg)
    b_moon = f_rho * i_star * 10 ** (-0.4 * K_V * x_moon) * (1 - 10 ** (-0.4 * K_V * x_obj))
    return np.where(np.asarray(moon_alt_deg) > 0, b_moon / B_DARK_V_NL, 0.0)


def sky_delta_mag(depth: Depth, band: str, alt_deg, moon_alt_deg, moon_sep_deg,
                  moon_phase_angle_deg):
    """Sky brightness relative to the dark zenith sky (mag/arcsec^2, negative: brighter):
    the dark sky off zenith plus moonlight."""
    alt = np.asarray(alt_deg, dtype=float)
    x_ks = _ks_airmass(90 - alt)
    dark_rel = x_ks * 10 ** (-0.4 * K_V * (x_ks - 1))  # dark sky brightens off zenith
    moon_rel = depth.moon_sky_factor[band] * moon_sky_ratio(alt, moon_alt_deg, moon_sep_deg,
                                                           moon_phase_angle_deg)
    return -2.5 * np.log10(dark_rel + moon_rel)


def seeing_at(seeing_zenith_arcsec, alt_deg):
    """The seeing FWHM (arcsec) at altitude ``alt_deg``: the zenith value x airmass^0.6."""
    x = airmass(np.maximum(np.asarray(alt_deg, dtype=float), 1.0))
    return np.asarray(seeing_zenith_arcsec) * x**0.6


def limiting_mag(depth: Depth, band: str, alt_deg, moon_alt_deg, moon_sep_deg,
                 moon_phase_angle_deg, seeing_zenith_arcsec, cloud, exposure_s):
    """5-sigma AB limiting magnitude (mag). Angles in deg; cloud in 0..1."""
    alt = np.asarray(alt_deg, dtype=float)
    x = airmass(np.maximum(alt, 1.0))
    sky_delta = sky_delta_mag(depth, band, alt, moon_alt_deg, moon_sep_deg,
                              moon_phase_angle_deg)
    seeing = seeing_at(seeing_zenith_arcsec, alt)
    return (depth.m5_zenith_dark[band]
            + 0.5 * sky_delta
            - depth.extinction_mag_per_airmass[band] * (x - 1)
            - 2.5 * np.log10(seeing / depth.reference_seeing_arcsec)
            + 1.25 * np.log10(np.asarray(exposure_s) / depth.reference_exposure_s)
            - depth.cloud_extinction_mag * np.asarray(cloud))
