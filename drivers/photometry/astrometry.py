"""The frame's WCS: read from the header, then refined against a reference catalogue.

Refinement (docs/photometry.md): the header may be off by up to ``max_offset_arcsec`` in
pointing and ``max_rotation_deg`` in rotation. For each trial rotation on a grid fine
enough that the rotation error moves no star by more than half a vote bin, every pair
(bright detection, bright reference star) votes for the pixel offset between them; the
bin with the most votes over all rotations gives the rotation and offset. Then nearest-
neighbour matching of every clean detection against every reference star, a linear
least-squares fit of CRVAL and the CD matrix (CRPIX kept) in the tangent plane, and four
rounds of re-matching with a shrinking radius and 3-sigma clipping. The result is a
plain TAN WCS: no distortion terms are fitted.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning
from scipy.spatial import cKDTree

from drivers.photometry.config import PhotometryConfig, PhotometryError

WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2")


def header_wcs(header) -> WCS:
    """The header's celestial WCS, or a one-line error naming what is missing."""
    missing = [k for k in WCS_KEYS if k not in header]
    has_scale = all(k in header for k in ("CD1_1", "CD2_2")) or all(
        k in header for k in ("CDELT1", "CDELT2"))
    if missing or not has_scale:
        what = ", ".join(missing + ([] if has_scale else ["CD1_1/CD2_2 or CDELT1/CDELT2"]))
        raise PhotometryError(f"no WCS in the header (missing {what})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises many kinds on a bad WCS
        raise PhotometryError(f"the header's WCS cannot be read: {exc}") from None
    if not w.has_celestial or w.wcs.lng != 0 or w.wcs.lat != 1:
        raise PhotometryError("the header's WCS is not celestial RA/Dec on axes 1 and 2 "
                              f"(CTYPE {header['CTYPE1']!r}, {header['CTYPE2']!r})")
    return w


# Tangent-plane (gnomonic) projection, degrees in and out ----------------------------
def project(ra, dec, ra0, dec0):
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def deproject(xi, eta, ra0, dec0):
    x, y = np.radians(xi), np.radians(eta)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    den = math.cos(d0) - y * math.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


@dataclass
class TanModel:
    """CRVAL (deg), CRPIX (0-based pixels) and CD (deg/pixel) of a TAN projection."""

    crval: np.ndarray
    crpix0: np.ndarray
    cd: np.ndarray

    @classmethod
    def from_wcs(cls, w: WCS) -> TanModel:
        return cls(np.array(w.wcs.crval, float), np.array(w.wcs.crpix, float) - 1.0,
                   np.array(w.pixel_scale_matrix, float))

    def pix2world(self, x, y):
        u, v = np.asarray(x) - self.crpix0[0], np.asarray(y) - self.crpix0[1]
        xi = self.cd[0, 0] * u + self.cd[0, 1] * v
        eta = self.cd[1, 0] * u + self.cd[1, 1] * v
        return deproject(xi, eta, *self.crval)

    def world2pix(self, ra, dec):
        xi, eta = project(ra, dec, *self.crval)
        inv = np.linalg.inv(self.cd)
        return (inv[0, 0] * xi + inv[0, 1] * eta + self.crpix0[0],
                inv[1, 0] * xi + inv[1, 1] * eta + self.crpix0[1])

    def to_wcs(self) -> WCS:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.crval = self.crval
        w.wcs.crpix = self.crpix0 + 1.0
        w.wcs.cd = self.cd
        w.wcs.radesys = "ICRS"
        return w

    @property
    def scale_arcsec(self) -> float:
        return 3600.0 * math.sqrt(abs(np.linalg.det(self.cd)))


@dataclass
class Refined:
    model: TanModel
    det_index: np.ndarray  # matched detections (indices into the inputs)
    ref_index: np.ndarray  # their reference stars
    rms_arcsec: float
    shift_arcsec: float  # how far the refined pointing is from the header's
    rotation_deg: float  # the refined WCS turned against the header's (sky, deg)


def _fit(model: TanModel, x, y, ra, dec) -> TanModel:
    """Least squares of (xi, eta) = CD (p - CRPIX) + t, CRVAL moved to t; twice, so that
    the final tangent point is where the fit put it."""
    for _ in range(2):
        xi, eta = project(ra, dec, *model.crval)
        a = np.column_stack([x - model.crpix0[0], y - model.crpix0[1], np.ones_like(x)])
        px, *_ = np.linalg.lstsq(a, xi, rcond=None)
        py, *_ = np.linalg.lstsq(a, eta, rcond=None)
        crval = np.array(deproject(px[2], py[2], *model.crval), float)
        model = TanModel(crval, model.crpix0, np.array([px[:2], py[:2]]))
    return model


def _vote(dx, dy, rx, ry, center, scale_arcsec, shape, cfg: PhotometryConfig,
          bin_px: float):
    """Rotation (deg) and pixel offset that most (detection, reference) pairs agree on,
    with the number of votes in its 2 x 2-bin peak."""
    max_shift = cfg.max_offset_arcsec / scale_arcsec + 2 * bin_px
    r_max = max(math.hypot(*shape) / 2.0, 1.0)
    step = math.degrees(bin_px / r_max)
    n_rot = math.ceil(cfg.max_rotation_deg / step) if cfg.max_rotation_deg > 0 else 0
    thetas = np.arange(-n_rot, n_rot + 1) * step
    thetas = thetas[np.argsort(np.abs(thetas), kind="stable")]  # ties: the smallest turn
    nb = math.ceil(2 * max_shift / bin_px) + 1
    best = (-1, 0.0, 0.0, 0.0)
    u, v = dx - center[0], dy - center[1]
    for th in thetas:
        c, s = math.cos(math.radians(th)), math.sin(math.radians(th))
        px, py = c * u - s * v + center[0], s * u + c * v + center[1]
        ox = (rx[None, :] - px[:, None]).ravel()
        oy = (ry[None, :] - py[:, None]).ravel()
        near = (np.abs(ox) < max_shift) & (np.abs(oy) < max_shift)
        ox, oy = ox[near], oy[near]
        if ox.size == 0:
            continue
        bx = ((ox + max_shift) / bin_px).astype(np.int64)
        by = ((oy + max_shift) / bin_px).astype(np.int64)
        h = np.bincount(by * nb + bx, minlength=nb * nb).reshape(nb, nb)
        h2 = h[:-1, :-1] + h[1:, :-1] + h[:-1, 1:] + h[1:, 1:]  # 2 x 2 bins: no split peaks
        k = int(np.argmax(h2))
        if h2.flat[k] > best[0]:
            j, i = divmod(k, nb - 1)
            sel = (bx >= i) & (bx <= i + 1) & (by >= j) & (by <= j + 1)
            best = (int(h2.flat[k]), float(th), float(np.median(ox[sel])),
                    float(np.median(oy[sel])))
    return best


def _pairs(tree: cKDTree, px, py, radius):
    """One-to-one nearest neighbours within ``radius``: (detection, reference, distance)."""
    d, j = tree.query(np.column_stack([px, py]), distance_upper_bound=radius)
    i = np.flatnonzero(np.isfinite(d))
    j, d = j[i], d[i]
    order = np.argsort(d, kind="stable")
    _u, first = np.unique(j[order], return_index=True)  # a reference star matched once
    keep = order[first]
    return i[keep], j[keep], d[keep]


def refine(w0: WCS, x, y, flux, usable, ref_ra, ref_dec, ref_mag, shape,
           fwhm_px: float, cfg: PhotometryConfig) -> Refined:
    """Refine the header's WCS ``w0`` by matching detections (pixels ``x``, ``y``; only
    ``usable`` ones) to the reference catalogue."""
    model0 = TanModel.from_wcs(w0)
    scale = model0.scale_arcsec
    ny, nx = shape
    with np.errstate(invalid="ignore", divide="ignore"):
        rx, ry = model0.world2pix(ref_ra, ref_dec)
    margin = cfg.max_offset_arcsec / scale + 10.0
    inside = (np.isfinite(rx) & np.isfinite(ry) & (rx > -margin) & (ry > -margin)
              & (rx < nx + margin) & (ry < ny + margin))
    ref_idx = np.flatnonzero(inside)
    good = np.flatnonzero(usable)
    if ref_idx.size < cfg.min_matches or good.size < cfg.min_matches:
        raise PhotometryError(
            f"too few reference matches: {ref_idx.size} reference stars near the frame and "
            f"{good.size} clean detections (need {cfg.min_matches})")
    # The vote: the brightest clean detections against twice as many bright references.
    bright = good[np.argsort(-flux[good], kind="stable")[:cfg.vote_stars]]
    rbright = ref_idx[np.argsort(ref_mag[ref_idx], kind="stable")[:2 * cfg.vote_stars]]
    bin_px = max(3.0, 2.0 * fwhm_px)
    center = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    votes, theta, ox, oy = _vote(x[bright], y[bright], rx[rbright], ry[rbright], center,
                                 scale, shape, cfg, bin_px)
    if votes < cfg.min_matches:
        raise PhotometryError(f"too few reference matches: the best offset has {votes} "
                              f"(need {cfg.min_matches}); is the header's pointing off by "
                              f"more than {cfg.max_offset_arcsec:g}\"?")
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    u, v = x[good] - center[0], y[good] - center[1]
    px, py = c * u - s * v + center[0] + ox, s * u + c * v + center[1] + oy
    tree = cKDTree(np.column_stack([rx[ref_idx], ry[ref_idx]]))
    di, rj, _d = _pairs(tree, px, py, 1.5 * bin_px)
    if di.size < cfg.min_matches:
        raise PhotometryError(f"too few reference matches: {di.size} (need "
                              f"{cfg.min_matches})")
    model = _fit(model0, x[good[di]], y[good[di]], ref_ra[ref_idx[rj]], ref_dec[ref_idx[rj]])
    radius = bin_px
    for _ in range(4):
        mx, my = model.world2pix(ref_ra[ref_idx], ref_dec[ref_idx])
        tree = cKDTree(np.column_stack([mx, my]))
        di, rj, d = _pairs(tree, x[good], y[good], radius)
        if di.size < cfg.min_matches:
            raise PhotometryError(f"too few reference matches: {di.size} after the WCS fit "
                                  f"(need {cfg.min_matches})")
        rms = math.sqrt(float(np.mean(d ** 2)))
        keep = d <= max(3.0 * rms, 0.5)
        di, rj = di[keep], rj[keep]
        model = _fit(model, x[good[di]], y[good[di]], ref_ra[ref_idx[rj]],
                     ref_dec[ref_idx[rj]])
        radius = max(3.0 * rms, 1.0)
    mx, my = model.world2pix(ref_ra[ref_idx[rj]], ref_dec[ref_idx[rj]])
    resid_px = np.hypot(mx - x[good[di]], my - y[good[di]])
    rms_px = math.sqrt(float(np.mean(resid_px ** 2)))
    if rms_px > max(1.0, 0.5 * fwhm_px):  # chance pairs: no solution is this loose
        raise PhotometryError(
            f"too few reference matches: no WCS fits them ({di.size} pairs at "
            f"{rms_px * model.scale_arcsec:.1f}\" rms); is the header's pointing off by more "
            f"than {cfg.max_offset_arcsec:g}\"?")
    resid = resid_px * model.scale_arcsec
    ra_c, dec_c = model.pix2world(*model0.crpix0)
    shift = _separation_arcsec(ra_c, dec_c, *model0.crval)
    turn = model.cd @ np.linalg.inv(model0.cd)  # the refined CD against the header's
    rotation = math.degrees(math.atan2(turn[1, 0] - turn[0, 1], turn[0, 0] + turn[1, 1]))
    return Refined(model, good[di], ref_idx[rj], math.sqrt(float(np.mean(resid ** 2))),
                   shift, rotation)


def _separation_arcsec(ra1, dec1, ra2, dec2) -> float:
    a1, d1, a2, d2 = (math.radians(float(v)) for v in (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((a2 - a1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0
