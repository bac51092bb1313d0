"""Context beyond the light curve: where on the sky an object is, and what the survey's
reference image holds there.

Galactic classes crowd towards the plane and the bulge (microlensing most of all, then
long-period variables, delta Scuti stars, eclipsing binaries), while extragalactic
transients and quasars are spread evenly over the sky (dust in the plane aside). The
classifier sees two numbers for this: the absolute Galactic latitude and the angular
distance from the Galactic centre, both in degrees. Without a position (a light curve
from a file without ``ra_deg``/``dec_deg``, or any source that has none) both are NaN,
and the model was trained with positions withheld from part of its light curves, so it
classifies from the light curve alone there (``docs/classifier.md``).

The reference (``ref``: per object and band, the magnitude of the source that the
survey's deep reference holds at the position, ``+inf`` where it holds nothing, NaN where
no pipeline said; the protocol's ``ref_mag``) tells a star that was already there (a
variable) from a source that appeared from nothing or on a galaxy (a transient). The
classifier sees three numbers for it: whether there is a counterpart (1, 0, NaN when
unknown), how much brighter than it the detections are (the median of reference minus
detected magnitude over the bands where it is known), and the counterpart's brightness.
"""

from __future__ import annotations

import numpy as np

from observatory.sky import galactic_lb

CONTEXT_NAMES = ["abs_gal_lat", "gal_centre_dist", "ref_present", "ref_excess", "ref_mag"]


def context_features(radec: np.ndarray | None, n: int, ref: np.ndarray | None = None,
                     obj=None, band=None, mag=None) -> np.ndarray:
    """(n, 5) context features from per-object ``radec`` (n, 2) in degrees (NaN rows:
    no position) and the reference ``ref`` (n, 3) with the detections (``obj``,
    ``band``, ``mag``) it is compared with; NaN where either is None."""
    out = np.full((n, len(CONTEXT_NAMES)), np.nan)
    if ref is not None and n:
        out[:, 2:] = reference_features(ref, n, obj, band, mag)
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


def reference_features(ref: np.ndarray, n: int, obj, band, mag) -> np.ndarray:
    """(n, 3): counterpart present (1/0/NaN), median excess over it of the detections
    (reference minus detected magnitude, where the reference has the band), and the
    counterpart's brightness (its brightest band); NaN where unknown."""
    ref = np.asarray(ref, dtype=float).reshape(n, 3)
    out = np.full((n, 3), np.nan)
    said = ~np.isnan(ref)
    finite = np.isfinite(ref)
    out[said.any(axis=1), 0] = 0.0
    out[finite.any(axis=1), 0] = 1.0
    with np.errstate(invalid="ignore"):
        out[:, 2] = np.where(finite, ref, np.inf).min(axis=1)
    out[~finite.any(axis=1), 2] = np.nan
    obj = np.asarray(obj, dtype=np.int64)
    if obj.size:
        r = ref[obj, np.asarray(band, dtype=np.int64)]
        ok = np.isfinite(r)
        if ok.any():
            o, x = obj[ok], (r - np.asarray(mag, dtype=float))[ok]
            order = np.lexsort((x, o))
            o, x = o[order], x[order]
            starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
            counts = np.diff(np.r_[starts, o.size])
            lo = starts + (counts - 1) // 2
            hi = starts + counts // 2
            out[o[starts], 1] = 0.5 * (x[lo] + x[hi])
    return out
