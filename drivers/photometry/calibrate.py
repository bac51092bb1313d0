"""Zero point from matched reference stars, and new or changed sources against a
reference built from the survey's own earlier detections (docs/photometry.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from drivers.photometry.config import PhotometryConfig, PhotometryError


@dataclass
class ZeroPoint:
    value: float  # AB mag of 1 ADU (total flux, background removed)
    err: float  # uncertainty of the value (not the scatter of single stars)
    n: int  # stars kept after clipping
    scatter: float  # robust scatter of single stars (mag)
    source: str  # "reference" or "header MAGZP"


def fit_zero_point(ref_mag, flux, snr, cfg: PhotometryConfig) -> ZeroPoint:
    """Sigma-clipped median of ref_mag + 2.5 log10(flux) over the matched stars with
    SNR >= ``zp_min_snr`` (relaxed to 10 when fewer than ``min_zp_stars`` reach it)."""
    ref_mag, flux, snr = (np.asarray(a, float) for a in (ref_mag, flux, snr))
    ok = np.isfinite(ref_mag) & (flux > 0) & np.isfinite(snr)
    use = ok & (snr >= cfg.zp_min_snr)
    if use.sum() < cfg.min_zp_stars:
        use = ok & (snr >= 10.0)
    if use.sum() < cfg.min_zp_stars:
        raise PhotometryError(f"too few reference matches for the zero point: {int(use.sum())} "
                              f"stars with SNR >= 10 (need {cfg.min_zp_stars})")
    zp = ref_mag[use] + 2.5 * np.log10(flux[use])
    keep = np.ones(zp.size, bool)
    for _ in range(5):
        med = float(np.median(zp[keep]))
        sig = max(1.4826 * float(np.median(np.abs(zp[keep] - med))), 1e-4)
        new = np.abs(zp - med) <= cfg.zp_clip_sigma * sig
        if new.sum() < cfg.min_zp_stars or np.array_equal(new, keep):
            break
        keep = new
    n = int(keep.sum())
    med = float(np.median(zp[keep]))
    sig = 1.4826 * float(np.median(np.abs(zp[keep] - med)))
    return ZeroPoint(med, 1.2533 * sig / math.sqrt(n), n, sig, "reference")


def header_zero_point(header) -> ZeroPoint:
    try:
        value = float(header["MAGZP"])
    except (KeyError, TypeError, ValueError):
        raise PhotometryError("no reference catalogue and no usable MAGZP in the header: "
                              "cannot calibrate (give --reference CAT.csv)") from None
    if not math.isfinite(value):
        raise PhotometryError("the header's MAGZP is not a finite number")
    err = header.get("MAGZPERR", 0.0)
    try:
        err = float(err)
    except (TypeError, ValueError):
        err = 0.0
    return ZeroPoint(value, err if math.isfinite(err) else 0.0, 0, math.nan, "header MAGZP")


# New and changed sources ------------------------------------------------------------
@dataclass
class Catalogue:
    """Sources on the sky: positions (deg), AB magnitudes and their errors, and how many
    detections each is made of."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    n: np.ndarray | None = None

    def __post_init__(self):
        self.ra_deg, self.dec_deg, self.mag, self.mag_err = (
            np.asarray(a, float) for a in (self.ra_deg, self.dec_deg, self.mag, self.mag_err))
        if self.n is None:
            self.n = np.ones(self.ra_deg.size, np.int64)


def _xyz(ra, dec) -> np.ndarray:
    a, d = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def match_sky(ra1, dec1, ra2, dec2, radius_arcsec: float):
    """For each position of set 1, the nearest of set 2 within the radius (-1: none)
    and the separation in arcsec."""
    if len(ra2) == 0:
        return np.full(len(ra1), -1), np.full(len(ra1), np.inf)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    d, j = cKDTree(_xyz(ra2, dec2)).query(_xyz(ra1, dec1), distance_upper_bound=chord)
    found = np.isfinite(d)
    sep = np.where(found, np.degrees(2 * np.arcsin(np.minimum(d, 2.0) / 2)) * 3600.0, np.inf)
    return np.where(found, j, -1), sep


def build_reference(epochs: list[Catalogue], radius_arcsec: float = 2.0) -> Catalogue:
    """Merge earlier frames' detections into one reference: each epoch's sources are
    matched to the reference so far; matched ones add to its inverse-variance mean
    magnitude and mean position, unmatched ones become new reference sources."""
    if not epochs:
        raise ValueError("build_reference needs at least one epoch")
    xyz = np.zeros((0, 3))  # sum of unit vectors: the mean position
    w = np.zeros(0)  # sum of 1/err²
    wm = np.zeros(0)  # sum of mag/err²
    n = np.zeros(0, np.int64)
    for cat in epochs:
        wi = 1.0 / np.maximum(cat.mag_err, 1e-3) ** 2
        if n.size:
            norm = np.linalg.norm(xyz, axis=1)
            ra, dec = _radec(xyz / norm[:, None])
            j, _sep = match_sky(cat.ra_deg, cat.dec_deg, ra, dec, radius_arcsec)
        else:
            j = np.full(cat.ra_deg.size, -1)
        m = j >= 0
        v = _xyz(cat.ra_deg, cat.dec_deg)
        np.add.at(xyz, j[m], v[m])
        np.add.at(w, j[m], wi[m])
        np.add.at(wm, j[m], wi[m] * cat.mag[m])
        np.add.at(n, j[m], 1)
        xyz = np.vstack([xyz, v[~m]])
        w, wm = np.concatenate([w, wi[~m]]), np.concatenate([wm, wi[~m] * cat.mag[~m]])
        n = np.concatenate([n, np.ones(int((~m).sum()), np.int64)])
    ra, dec = _radec(xyz / np.linalg.norm(xyz, axis=1)[:, None])
    return Catalogue(ra, dec, wm / w, 1.0 / np.sqrt(w), n)


def _radec(xyz: np.ndarray):
    return (np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0,
            np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0))))


@dataclass
class Changes:
    new: np.ndarray  # indices of detections with no reference source within the radius
    changed: np.ndarray  # indices of matched detections with |dmag| > k sigma
    ref_index: np.ndarray  # per detection: its reference source (-1: none)
    delta_mag: np.ndarray  # per detection: mag - reference mag (nan: none)
    significance: np.ndarray  # per detection: |dmag| / sigma (nan: none)


def find_changes(detections: Catalogue, reference: Catalogue, radius_arcsec: float = 2.0,
                 k: float = 5.0, floor_mag: float = 0.02) -> Changes:
    """New and changed sources: sigma = sqrt(err² + ref_err² + floor²)."""
    j, _sep = match_sky(detections.ra_deg, detections.dec_deg, reference.ra_deg,
                        reference.dec_deg, radius_arcsec)
    found = j >= 0
    jj = np.where(found, j, 0)
    dmag = np.where(found, detections.mag - reference.mag[jj], np.nan)
    sigma = np.sqrt(detections.mag_err ** 2 + reference.mag_err[jj] ** 2 + floor_mag ** 2)
    signif = np.where(found, np.abs(dmag) / sigma, np.nan)
    changed = np.flatnonzero(found & (np.nan_to_num(signif) > k))
    return Changes(np.flatnonzero(~found), changed, j, dmag, signif)
