"""One frame to calibrated detections: measure (``extract``), place on the sky (the
header's WCS, refined against a reference catalogue when one is given), calibrate (the
reference stars' zero point, else the header's MAGZP). docs/photometry.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS

from drivers.photometry.astrometry import TanModel, header_wcs, refine
from drivers.photometry.calibrate import ZeroPoint, fit_zero_point, header_zero_point
from drivers.photometry.config import BAD_FOR_CALIBRATION, PhotometryConfig, PhotometryError
from drivers.photometry.extract import measure
from drivers.photometry.files import csv_text


@dataclass
class FrameResult:
    """The detections of one frame and how they were obtained."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mag: np.ndarray  # AB, total flux (aperture-corrected)
    mag_err: np.ndarray  # 1.0857 / SNR and the zero point's error, in quadrature
    snr: np.ndarray
    flags: np.ndarray  # bits: drivers/photometry/config.py
    x: np.ndarray  # 0-based pixels
    y: np.ndarray
    flux_adu: np.ndarray
    wcs: WCS  # the WCS the positions come from (refined or the header's)
    zero_point: ZeroPoint
    limiting_mag: float  # 5 sigma, point source, median background
    fwhm_px: float
    aperture_px: float
    apcorr: float
    background_adu: float
    background_rms_adu: float
    wcs_refined: bool = False
    wcs_matches: int = 0
    wcs_rms_arcsec: float = math.nan
    wcs_shift_arcsec: float = math.nan  # refined pointing minus the header's
    wcs_rotation_deg: float = math.nan
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ra_deg.size)

    def csv(self) -> str:
        return csv_text(self.ra_deg, self.dec_deg, self.mag, self.mag_err, self.snr,
                        self.flags)

    def sources(self, bad_flags: int = BAD_FOR_CALIBRATION) -> list[dict]:
        """The rows without any of ``bad_flags`` as the sources of an SBP1 ``detections``
        event (docs/protocol.md): ra_deg, dec_deg, mag, mag_err."""
        ok = (self.flags & bad_flags) == 0
        return [{"ra_deg": a, "dec_deg": d, "mag": m, "mag_err": e}
                for a, d, m, e in zip(self.ra_deg[ok].tolist(), self.dec_deg[ok].tolist(),
                                      self.mag[ok].tolist(), self.mag_err[ok].tolist(),
                                      strict=True)]

    def summary(self) -> dict:
        zp = self.zero_point
        return {"sources": len(self), "zero_point": round(zp.value, 4),
                "zero_point_err": round(zp.err, 4), "zero_point_stars": zp.n,
                "zero_point_source": zp.source, "limiting_mag": round(self.limiting_mag, 3),
                "fwhm_px": round(self.fwhm_px, 3), "aperture_px": round(self.aperture_px, 3),
                "apcorr": round(self.apcorr, 4), "wcs_refined": self.wcs_refined,
                "wcs_matches": self.wcs_matches,
                "wcs_rms_arcsec": _r(self.wcs_rms_arcsec, 3),
                "wcs_shift_arcsec": _r(self.wcs_shift_arcsec, 2),
                "wcs_rotation_deg": _r(self.wcs_rotation_deg, 3)}


def _r(v: float, n: int):
    return round(v, n) if math.isfinite(v) else None


def process_frame(data: np.ndarray, header, reference=None,
                  config: PhotometryConfig | None = None) -> FrameResult:
    """Detect, measure, place and calibrate the sources of one frame.

    ``data``: 2-D array (ADU; NaN pixels are masked); ``header``: its FITS header (a
    celestial WCS needed; GAIN, SATURATE, MAGZP used when present). ``reference``:
    ``(ra_deg, dec_deg, mag)`` arrays of calibration stars in the frame's band, or None
    (then the header's MAGZP calibrates). Raises :class:`PhotometryError` (one line) on
    a frame or reference that cannot be processed."""
    cfg = config or PhotometryConfig()
    w0 = header_wcs(header)  # before any work: cheap checks first
    zp_header = header_zero_point(header) if reference is None else None
    if reference is not None:
        ref_ra, ref_dec, ref_mag = (np.asarray(a, float) for a in reference)
        if not (ref_ra.shape == ref_dec.shape == ref_mag.shape) or ref_ra.ndim != 1:
            raise PhotometryError("reference arrays must be 1-D and of one length")
    m = measure(data, header, cfg)
    notes = list(m.notes)
    model = TanModel.from_wcs(w0)
    refined = None
    if reference is not None:
        usable = ((m.flags & BAD_FOR_CALIBRATION) == 0) & (m.snr >= cfg.match_snr)
        refined = refine(w0, m.x, m.y, m.flux, usable, ref_ra, ref_dec, ref_mag,
                         np.shape(data), m.fwhm_px, cfg)
        model = refined.model
        zp = fit_zero_point(ref_mag[refined.ref_index], m.flux[refined.det_index],
                            m.snr[refined.det_index], cfg)
        wcs = model.to_wcs()
        ra, dec = model.pix2world(m.x, m.y)
    else:
        zp = zp_header
        notes.append(f"zero point from the header's MAGZP = {zp.value:.4f}")
        wcs = w0
        if m.x.size:
            ra, dec = w0.all_pix2world(m.x, m.y, 0)
        else:
            ra, dec = np.zeros(0), np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = zp.value - 2.5 * np.log10(m.flux)
        err = np.hypot(1.0857362 / m.snr, zp.err)
    limit = zp.value - 2.5 * math.log10(m.flux5_adu) if m.flux5_adu > 0 else math.nan
    res = FrameResult(np.asarray(ra, float) % 360.0, np.asarray(dec, float), mag, err, m.snr,
                      m.flags, m.x, m.y, m.flux, wcs, zp, limit, m.fwhm_px, m.aperture_px,
                      m.apcorr, m.background_adu, m.background_rms_adu, notes=notes)
    if refined is not None:
        res.wcs_refined = True
        res.wcs_matches = int(refined.det_index.size)
        res.wcs_rms_arcsec = refined.rms_arcsec
        res.wcs_shift_arcsec = refined.shift_arcsec
        res.wcs_rotation_deg = refined.rotation_deg
    return res
