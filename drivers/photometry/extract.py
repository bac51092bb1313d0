"""Pixels to measured sources: background, detection, centroids, aperture photometry,
flux errors, the aperture correction, flags and the frame's 5-sigma limit (with ``sep``,
the C library of Source Extractor's algorithms). Positions are 0-based pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep
from scipy.spatial import cKDTree

from drivers.photometry.config import (
    FLAG_EDGE,
    FLAG_SATURATED,
    PhotometryConfig,
    PhotometryError,
)

GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM / sigma
PIXSTACK = 3_000_000  # sep's pixel buffer: a 4k x 4k frame at a 3-sigma threshold fits
SATURATED_FRAME = 0.5  # more than this fraction of pixels at SATURATE: no usable frame


@dataclass
class Measured:
    """Sources of one frame in pixels and ADU (total flux: aperture-corrected)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    snr: np.ndarray
    flags: np.ndarray
    fwhm_px: float
    aperture_px: float
    apcorr: float
    apcorr_err: float
    apcorr_stars: int
    background_adu: float
    background_rms_adu: float
    flux5_adu: float  # total flux measured at 5 sigma on the median background
    gain: float | None
    saturate: float | None
    notes: list[str]


def _gain(header, cfg: PhotometryConfig) -> float | None:
    g = cfg.gain if cfg.gain is not None else header.get("GAIN")
    try:
        g = float(g) if g is not None else None
    except (TypeError, ValueError):
        g = None
    return g if g is not None and math.isfinite(g) and g > 0 else None


def _saturate(header, cfg: PhotometryConfig) -> float | None:
    s = cfg.saturate if cfg.saturate is not None else header.get("SATURATE")
    try:
        s = float(s) if s is not None else None
    except (TypeError, ValueError):
        s = None
    return s if s is not None and math.isfinite(s) else None


def prepare(data: np.ndarray, header, cfg: PhotometryConfig):
    """The frame as sep wants it (native float32, NaN replaced), its bad-pixel mask and
    saturation mask; one-line errors for frames that cannot be measured."""
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise PhotometryError(f"the frame is not a 2-D image (shape {arr.shape})")
    if arr.size == 0:
        raise PhotometryError("empty frame (no pixels)")
    if min(arr.shape) < 16:
        raise PhotometryError(f"frame too small ({arr.shape[1]} x {arr.shape[0]} pixels; "
                              "need at least 16 x 16)")
    img = np.array(arr, dtype=np.float32, order="C")  # a copy, native byte order
    bad = ~np.isfinite(img)
    n_good = img.size - int(bad.sum())
    if n_good == 0:
        raise PhotometryError("the frame has no finite pixels (all NaN or infinite)")
    saturate = _saturate(header, cfg)
    sat = np.zeros(img.shape, bool)
    if saturate is not None:
        with np.errstate(invalid="ignore"):
            sat = img >= saturate
        if sat.sum() > SATURATED_FRAME * n_good:
            raise PhotometryError(f"the frame is saturated ({100 * sat.sum() / n_good:.0f} % "
                                  f"of its pixels at SATURATE = {saturate:g})")
    if bad.any():
        img[bad] = np.median(img[~bad])
    return img, bad, sat, saturate


def _constant(img: np.ndarray, bad: np.ndarray) -> bool:
    good = img[::7, ::7][~bad[::7, ::7]]
    if good.size and good.min() != good.max():
        return False
    v = img[~bad]
    return bool(v.min() == v.max())


def _clipped_mean(values: np.ndarray) -> float:
    """The 3-sigma clipped mean of background-subtracted pixels: what sep's mode
    estimate missed (up to 0.5 ADU on whole-ADU data, which it bins)."""
    v = values.astype(np.float64)
    keep = np.ones(v.size, bool)
    m = 0.0
    for _ in range(5):
        if keep.sum() < 100:
            return 0.0
        m, sd = float(v[keep].mean()), float(v[keep].std())
        new = np.abs(v - m) < 3.0 * sd
        if np.array_equal(new, keep):
            break
        keep = new
    return m


def _kernel(fwhm_px: float) -> np.ndarray:
    sigma = max(fwhm_px, 1.0) / GAUSS_FWHM
    r = max(1, math.ceil(2.0 * sigma))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.outer(g, g).astype(np.float32)


def estimate_fwhm(sub: np.ndarray, rms: float, mask, cfg: PhotometryConfig) -> tuple[float, str]:
    """The PSF's FWHM in pixels: twice the median half-light radius of clean stars above
    20 sigma in the central 1024² (exact for a Gaussian), else ``fwhm_guess_px``."""
    ny, nx = sub.shape
    h = min(ny, 1024) // 2
    w = min(nx, 1024) // 2
    cy, cx = ny // 2, nx // 2
    part = np.ascontiguousarray(sub[cy - h:cy + h, cx - w:cx + w])
    pm = np.ascontiguousarray(mask[cy - h:cy + h, cx - w:cx + w]).view(np.uint8)
    sep.set_extract_pixstack(PIXSTACK)
    try:
        obj = sep.extract(part, 20.0, err=rms, mask=pm, minarea=3, deblend_cont=1.0)
    except Exception as exc:  # sep raises bare Exceptions (e.g. buffer overflows)
        raise PhotometryError(f"source extraction failed: {exc}") from None
    clean = obj[(obj["flag"] == 0) & (obj["peak"] > 0)]
    if clean.size:
        r, fl = sep.flux_radius(part, clean["x"], clean["y"], np.full(clean.size, 15.0),
                                0.5, subpix=5)
        r = r[(fl == 0) & np.isfinite(r) & (r > 0)]
        if r.size:
            return float(2.0 * np.median(r)), f"{r.size} star" + "s" * (r.size > 1)
    return cfg.fwhm_guess_px, "the default guess (no star above 20 sigma)"


def measure(data: np.ndarray, header, cfg: PhotometryConfig) -> Measured:
    img, bad, sat, saturate = prepare(data, header, cfg)
    notes: list[str] = []
    gain = _gain(header, cfg)
    if gain is None:
        notes.append("no GAIN: flux errors hold the background noise only")
    mask = bad | sat
    # sep converts a bool mask on every call (slow on 4k x 4k): uint8, and none at all
    # when nothing is masked.
    bad_u8 = bad.view(np.uint8) if bad.any() else None
    bkg = sep.Background(img, mask=mask.view(np.uint8), bw=cfg.back_size, bh=cfg.back_size,
                         fw=cfg.back_filter, fh=cfg.back_filter)
    level, grms = float(bkg.globalback), float(bkg.globalrms)
    if not (math.isfinite(grms) and grms > 0) or _constant(img, bad):
        raise PhotometryError("the frame has no noise (constant pixel values): no sky to "
                              "measure against")
    rms_map = bkg.rms()
    bkg.subfrom(img)  # img is now background-subtracted
    step = max(1, int(math.sqrt(img.size / 1e6)))  # about a million pixels
    offset = _clipped_mean(img[::step, ::step][~mask[::step, ::step]])
    img -= np.float32(offset)
    level += offset
    fwhm, how = estimate_fwhm(img, grms, mask, cfg)
    notes.append(f"FWHM {fwhm:.2f} px from {how}")
    sep.set_extract_pixstack(PIXSTACK)
    sep.set_sub_object_limit(4096)
    try:
        # sep compares the filtered image with thresh x err (the per-pixel noise); the
        # kernel (sum 1) lowers the noise by sqrt(sum k²): the threshold below is in
        # sigma of the filtered image.
        k = _kernel(fwhm)
        k_noise = float(np.sqrt((k ** 2).sum()) / k.sum())
        obj = sep.extract(img, cfg.detect_thresh * k_noise, err=grms, mask=bad_u8,
                          minarea=cfg.minarea, filter_kernel=k, filter_type="conv",
                          deblend_cont=cfg.deblend_cont)
    except Exception as exc:  # sep raises bare Exceptions (e.g. buffer overflows)
        raise PhotometryError(f"source extraction failed: {exc}") from None
    x, y = obj["x"].astype(np.float64), obj["y"].astype(np.float64)
    ex_flags = obj["flag"].astype(np.int64)
    if x.size:
        # A window of at least 1 pixel sigma: narrower ones pull the centroids of
        # undersampled stars (FWHM ~ 1 px) towards pixel centres by up to 0.15 px.
        sig = np.full(x.size, max(fwhm / GAUSS_FWHM, 1.0))
        xw, yw, wf = sep.winpos(img, x, y, sig, mask=bad_u8, subpix=5)
        ok = (wf == 0) & (np.hypot(xw - x, yw - y) < fwhm)
        x, y = np.where(ok, xw, x), np.where(ok, yw, y)
    r_ap = max(cfg.aperture_fwhm * fwhm, cfg.min_aperture_px)
    flux, ferr, ap_flags = sep.sum_circle(img, x, y, r_ap, err=rms_map, gain=gain,
                                          mask=bad_u8, subpix=5)
    flags = ex_flags | ap_flags.astype(np.int64)
    sy, sx = np.nonzero(sat)
    if sx.size and x.size:  # a saturated pixel within the aperture + 1 px
        near = cKDTree(np.column_stack([sx, sy])).query(np.column_stack([x, y]),
                                                         distance_upper_bound=r_ap + 1.0)[0]
        flags |= np.where(np.isfinite(near), FLAG_SATURATED, 0)
    ny, nx = img.shape
    edge = max(cfg.edge_fwhm * fwhm, r_ap + 1.0)
    at_edge = (x < edge - 0.5) | (y < edge - 0.5) | (x > nx - 0.5 - edge) | (y > ny - 0.5 - edge)
    flags |= np.where(at_edge, FLAG_EDGE, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(ferr > 0, flux / ferr, 0.0)
    apcorr, apcorr_err, n_ap = _aperture_correction(img, x, y, snr, flags, r_ap, fwhm, bad_u8)
    if n_ap == 0:
        notes.append("aperture correction from a Gaussian of the measured FWHM (too few "
                     "bright stars)")
    keep = np.isfinite(snr) & (snr >= cfg.min_snr) & (flux > 0)
    # The 5-sigma flux on the median background: f = 5 sqrt(f / gain + n_pix rms²).
    sample = rms_map[::8, ::8][~mask[::8, ::8]]
    rms_med = float(np.median(sample)) if sample.size else grms
    var_bg = math.pi * r_ap ** 2 * rms_med ** 2
    pois = 1.0 / gain if gain else 0.0
    f5 = (25.0 * pois + math.sqrt((25.0 * pois) ** 2 + 100.0 * var_bg)) / 2.0
    return Measured(x[keep], y[keep], flux[keep] * apcorr, ferr[keep] * apcorr, snr[keep],
                    flags[keep], fwhm, r_ap, apcorr, apcorr_err, n_ap, level, grms,
                    f5 * apcorr, gain, saturate, notes)


def _aperture_correction(img, x, y, snr, flags, r_ap, fwhm, bad):
    """Total over aperture flux: the median ratio of a large aperture (3 FWHM) to the
    measuring one on bright, clean, isolated stars; else the Gaussian value."""
    r_big = max(3.0 * fwhm, r_ap + 3.0)
    clean = (flags == 0) & (snr > 50)
    if clean.sum() >= 5:
        # isolated: no other detection within 2 r_big
        xs, ys = x[clean], y[clean]
        order = np.argsort(-snr[clean])[:400]
        xs, ys = xs[order], ys[order]
        tree = cKDTree(np.column_stack([x, y]))
        alone = np.array([len(n) == 1 for n in tree.query_ball_point(
            np.column_stack([xs, ys]), 2 * r_big)], bool)
        xs, ys = xs[alone], ys[alone]
        if xs.size >= 5:
            small = sep.sum_circle(img, xs, ys, r_ap, mask=bad, subpix=5)[0]
            big, _e, fl = sep.sum_circle(img, xs, ys, r_big, mask=bad, subpix=5)
            ratio = (big / small)[(fl == 0) & (small > 0)]
            if ratio.size >= 5:
                med = float(np.median(ratio))
                mad = 1.4826 * float(np.median(np.abs(ratio - med)))
                return med, 1.2533 * mad / math.sqrt(ratio.size), int(ratio.size)
    sigma = fwhm / GAUSS_FWHM
    return 1.0 / (1.0 - math.exp(-r_ap ** 2 / (2 * sigma ** 2))), 0.0, 0
