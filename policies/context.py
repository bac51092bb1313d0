"""Context beyond the light curve: where on the sky an object is.

Galactic classes crowd towards the plane and the bulge (microlensing most of all, then
long-period variables, delta Scuti stars, eclipsing binaries), while extragalactic
transients and quasars are spread evenly over the sky (dust in the plane aside). The
classifier sees two numbers for this: the absolute Galactic latitude and the angular
distance from the Galactic centre, both in degrees. Without a position (a light curve
from a file without ``ra_deg``/``dec_deg``, or any source that has none) both are NaN,
and the model was trained with positions withheld from part of its light curves, so it
classifies from the light curve alone there (``docs/classifier.md``).
"""

from __future__ import annotations

import numpy as np

from observatory.sky import galactic_lb

CONTEXT_NAMES = ["abs_gal_lat", "gal_centre_dist"]


def context_features(radec: np.ndarray | None, n: int) -> np.ndarray:
    """(n, 2) context features from per-object ``radec`` (n, 2) in degrees (NaN rows:
    no position); all NaN when ``radec`` is None."""
    out = np.full((n, len(CONTEXT_NAMES)), np.nan)
    if radec is None or n == 0:
        return out
    radec = np.asarray(radec, dtype=float).reshape(n, 2)
    ok = np.isfinite(radec).all(axis=1)
    if ok.any():
        lon, lat = galactic_lb(radec[ok, 0], radec[ok, 1])
        lon_r, lat_r = np.radians(lon), np.radians(lat)
        out[ok, 0] = np.abs(lat)
        out[ok, 1] = np.degrees(np.arccos(np.clip(np.cos(lat_r) * np.cos(lon_r), -1, 1)))
    return out
