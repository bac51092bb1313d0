"""Frames of the simulated sky: what a telescope's camera would read out.

A frame is a 2-D array in ADU and a FITS header with a TAN WCS, rendered from a list of
point sources (ra, dec, AB mag): each source is a stamp of its pixel-integrated PSF
(Gaussian, integrated exactly with erf, or Moffat, supersampled 3x3 per pixel), added
into the image with one ``bincount``; then a flat sky, Poisson noise on sky plus
sources, Gaussian read noise, a bias pedestal, the gain, rounding to whole ADU and
clipping at the saturation level. Nothing loops over pixels or sources in Python.

The defaults are the default array's (``brain/configs/sitian-54.yaml``), r band: 30 s
exposures, dark sky 21.1 mag/arcsec², 1.0" seeing, and a zero point solved so that the
frame's 5-sigma point-source (PSF) limit is the config's ``m5_zenith_dark`` (20.6 in r).
The camera's pixel scale is not in the config: 1.0"/pixel here (a 4096² frame is one
1.14° chip; the config's 12 deg² field of view is 12,470² pixels at this scale).
``FrameSpec.for_band`` builds the spec of any band of an ``ArrayConfig``.

``header_offset_arcsec`` and ``header_rotation_deg`` make the header's WCS wrong the way
a bad pointing model does (the pixels keep the true sky), to exercise WCS refinement in
``drivers.photometry``. Docs: docs/photometry.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.optimize import brentq
from scipy.special import erf

from observatory.arrayconfig import ArrayConfig

GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM / sigma
MOFFAT_LOST = 1e-3  # flux fraction of a Moffat star left outside its stamp
SUPERSAMPLE = 3  # Moffat: samples per pixel side
CHUNK = 4096  # sources per rendering batch (bounds the stamp arrays' memory)


@dataclass(frozen=True)
class FrameSpec:
    """Everything that makes a frame: pointing, detector, sky and exposure."""

    ra_deg: float = 150.0
    dec_deg: float = 30.0
    nx: int = 4096
    ny: int = 4096
    pixel_scale_arcsec: float = 1.0
    seeing_fwhm_arcsec: float = 1.0
    psf: str = "gaussian"  # or "moffat"
    moffat_beta: float = 3.0
    sky_mag_arcsec2: float = 21.1
    zp_e_per_s: float | None = None  # AB mag giving 1 e-/s; None: solved from m5
    m5: float = 20.6  # the 5-sigma PSF limit the solved zero point reaches
    exposure_s: float = 30.0
    gain_e_per_adu: float = 1.5
    read_noise_e: float = 3.0
    bias_adu: float = 100.0
    saturate_adu: float = 65535.0
    band: str = "r"
    header_offset_arcsec: tuple[float, float] = (0.0, 0.0)  # (east, north) error of the WCS
    header_rotation_deg: float = 0.0

    def __post_init__(self):
        if self.psf not in ("gaussian", "moffat"):
            raise ValueError(f"psf must be 'gaussian' or 'moffat', not {self.psf!r}")
        if self.zp_e_per_s is None:
            object.__setattr__(self, "zp_e_per_s", zero_point_for_depth(
                self.m5, self.sky_mag_arcsec2, self.seeing_fwhm_arcsec,
                self.pixel_scale_arcsec, self.exposure_s, self.read_noise_e))

    @classmethod
    def for_band(cls, config: ArrayConfig, band: str, **overrides) -> FrameSpec:
        """The spec of ``band`` in ``config`` at zenith, dark sky, reference seeing."""
        d = config.depth
        base = {"band": band, "m5": d.m5_zenith_dark[band],
                "sky_mag_arcsec2": d.sky_dark_mag_arcsec2[band],
                "seeing_fwhm_arcsec": d.reference_seeing_arcsec,
                "exposure_s": config.survey.exposure_s}
        return cls(**{**base, **overrides})

    def with_(self, **changes) -> FrameSpec:
        """A copy with ``changes``; the zero point is solved again unless given."""
        if "zp_e_per_s" not in changes:
            changes["zp_e_per_s"] = None
        return replace(self, **changes)

    # Derived quantities -------------------------------------------------------------
    @property
    def fwhm_px(self) -> float:
        return self.seeing_fwhm_arcsec / self.pixel_scale_arcsec

    @property
    def sky_e_per_px(self) -> float:
        return (self.exposure_s * self.pixel_scale_arcsec ** 2
                * 10 ** (-0.4 * (self.sky_mag_arcsec2 - self.zp_e_per_s)))

    @property
    def magzp(self) -> float:
        """AB mag of a source giving 1 ADU in the whole exposure (header MAGZP)."""
        return self.zp_e_per_s + 2.5 * math.log10(self.exposure_s / self.gain_e_per_adu)

    def flux_e(self, mag) -> np.ndarray:
        return self.exposure_s * 10 ** (-0.4 * (np.asarray(mag, float) - self.zp_e_per_s))

    def enclosed(self, radius_px: float) -> float:
        """Fraction of a star's flux within ``radius_px`` of its centre (the PSF before
        pixelisation)."""
        if self.psf == "gaussian":
            sigma = self.fwhm_px / GAUSS_FWHM
            return 1.0 - math.exp(-radius_px ** 2 / (2 * sigma ** 2))
        b = self.moffat_beta
        alpha = self.fwhm_px / (2.0 * math.sqrt(2 ** (1.0 / b) - 1.0))
        return 1.0 - (1.0 + (radius_px / alpha) ** 2) ** (1.0 - b)

    def aperture_limit(self, radius_px: float) -> float:
        """5-sigma limit (AB mag, total flux) of circular-aperture photometry of radius
        ``radius_px`` on this frame's sky, read noise and PSF."""
        f5 = _five_sigma_e(math.pi * radius_px ** 2, self.sky_e_per_px, self.read_noise_e)
        return self.zp_e_per_s + 2.5 * math.log10(self.exposure_s * self.enclosed(radius_px)
                                                   / f5)

    def psf_limit(self) -> float:
        """5-sigma limit of PSF photometry (n_eff = 2.266 FWHM² + 1 pixel²)."""
        f5 = _five_sigma_e(_n_eff(self.fwhm_px), self.sky_e_per_px, self.read_noise_e)
        return self.zp_e_per_s + 2.5 * math.log10(self.exposure_s / f5)

    def true_wcs(self) -> WCS:
        return _tan_wcs(self.ra_deg, self.dec_deg, self.nx, self.ny, self.pixel_scale_arcsec,
                        0.0)

    def header_wcs(self) -> WCS:
        """The WCS the header claims: the pointing off by ``header_offset_arcsec`` (east,
        north on the sky) and the field turned by ``header_rotation_deg``."""
        east, north = self.header_offset_arcsec
        dec = self.dec_deg + north / 3600.0
        ra = (self.ra_deg + east / 3600.0 / max(math.cos(math.radians(dec)), 1e-6)) % 360.0
        return _tan_wcs(ra, dec, self.nx, self.ny, self.pixel_scale_arcsec,
                        self.header_rotation_deg)


def _n_eff(fwhm_px: float) -> float:
    return 2.266 * fwhm_px ** 2 + 1.0


def _five_sigma_e(npix: float, sky_e: float, read_noise_e: float) -> float:
    """The flux (e-) measured at 5 sigma over ``npix`` pixels of sky and read noise:
    f = 5 sqrt(f + npix (sky + rn²))."""
    b = npix * (sky_e + read_noise_e ** 2)
    return (25.0 + math.sqrt(625.0 + 100.0 * b)) / 2.0


def zero_point_for_depth(m5: float, sky_mag_arcsec2: float, seeing_arcsec: float,
                         pixel_scale_arcsec: float, exposure_s: float,
                         read_noise_e: float) -> float:
    """The zero point (AB mag for 1 e-/s) at which a point source of ``m5`` reaches
    5 sigma in PSF photometry."""
    n_eff = _n_eff(seeing_arcsec / pixel_scale_arcsec)

    def excess(zp):
        sky = exposure_s * pixel_scale_arcsec ** 2 * 10 ** (-0.4 * (sky_mag_arcsec2 - zp))
        f5 = _five_sigma_e(n_eff, sky, read_noise_e)
        return zp + 2.5 * math.log10(exposure_s / f5) - m5

    return float(brentq(excess, m5 - 20.0, m5 + 20.0, xtol=1e-6))


def _tan_wcs(ra, dec, nx, ny, scale_arcsec, rotation_deg) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    s = scale_arcsec / 3600.0
    c, n = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    # East to the left (RA falls with x), north up, then turned by rotation_deg.
    w.wcs.cd = np.array([[-s * c, s * n], [s * n, s * c]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


# Rendering --------------------------------------------------------------------------
def _stamp_radius(spec: FrameSpec) -> int:
    f = spec.fwhm_px
    if spec.psf == "gaussian":
        return max(3, math.ceil(3.0 * f))
    alpha = f / (2.0 * math.sqrt(2 ** (1.0 / spec.moffat_beta) - 1.0))
    r = alpha * math.sqrt(MOFFAT_LOST ** (1.0 / (1.0 - spec.moffat_beta)) - 1.0)
    return max(3, math.ceil(r))


def _gaussian_stamps(dx, dy, radius, fwhm_px) -> np.ndarray:
    """(n, 2r+1, 2r+1) pixel-integrated unit Gaussians centred (dx, dy) off the middle."""
    edges = np.arange(-radius, radius + 2) - 0.5
    s = math.sqrt(2.0) * fwhm_px / GAUSS_FWHM
    cx = 0.5 * erf((edges[None, :] - dx[:, None]) / s)
    cy = 0.5 * erf((edges[None, :] - dy[:, None]) / s)
    return np.diff(cy, axis=1)[:, :, None] * np.diff(cx, axis=1)[:, None, :]


def _moffat_stamps(dx, dy, radius, fwhm_px, beta) -> np.ndarray:
    """Unit Moffat profiles, averaged over 3x3 samples in each pixel."""
    alpha = fwhm_px / (2.0 * math.sqrt(2 ** (1.0 / beta) - 1.0))
    k = SUPERSAMPLE
    sub = (np.arange(k) + 0.5) / k - 0.5
    grid = (np.arange(-radius, radius + 1)[:, None] + sub[None, :]).ravel()  # (S*k,)
    gx = grid[None, :] - dx[:, None]
    gy = grid[None, :] - dy[:, None]
    r2 = gy[:, :, None] ** 2 + gx[:, None, :] ** 2
    prof = (beta - 1.0) / (math.pi * alpha ** 2) * (1.0 + r2 / alpha ** 2) ** (-beta)
    n, side = dx.size, 2 * radius + 1
    return prof.reshape(n, side, k, side, k).mean(axis=(2, 4))


def render_electrons(spec: FrameSpec, ra_deg, dec_deg, mag) -> np.ndarray:
    """The noiseless image in electrons: sky plus every source's PSF stamp."""
    ra, dec, mag = (np.atleast_1d(np.asarray(a, float)) for a in (ra_deg, dec_deg, mag))
    x, y = spec.true_wcs().wcs_world2pix(ra, dec, 0)
    radius = _stamp_radius(spec)
    ny, nx = spec.ny, spec.nx
    keep = (np.isfinite(x) & np.isfinite(y) & np.isfinite(mag) & (x > -radius - 1)
            & (x < nx + radius) & (y > -radius - 1) & (y < ny + radius))
    x, y, flux = x[keep], y[keep], spec.flux_e(mag[keep])
    image = np.full(ny * nx, spec.sky_e_per_px, dtype=np.float64)
    off = np.arange(-radius, radius + 1)
    for lo in range(0, x.size, CHUNK):
        sl = slice(lo, lo + CHUNK)
        ix, iy = np.rint(x[sl]).astype(np.int64), np.rint(y[sl]).astype(np.int64)
        dx, dy = x[sl] - ix, y[sl] - iy
        if spec.psf == "gaussian":
            stamps = _gaussian_stamps(dx, dy, radius, spec.fwhm_px)
        else:
            stamps = _moffat_stamps(dx, dy, radius, spec.fwhm_px, spec.moffat_beta)
        px = ix[:, None, None] + off[None, None, :]
        py = iy[:, None, None] + off[None, :, None]
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        idx = (py * nx + px)[inside]
        weights = (stamps * flux[sl, None, None])[inside]
        image += np.bincount(idx, weights=weights, minlength=ny * nx)
    return image.reshape(ny, nx)


def render_frame(spec: FrameSpec, ra_deg, dec_deg, mag,
                 rng: np.random.Generator) -> tuple[np.ndarray, fits.Header]:
    """A noisy frame (float32 ADU, whole numbers, clipped at SATURATE) and its header."""
    expected = render_electrons(spec, ra_deg, dec_deg, mag)
    electrons = rng.poisson(expected).astype(np.float32)
    electrons += rng.standard_normal(electrons.shape, dtype=np.float32) * np.float32(
        spec.read_noise_e)
    adu = electrons / np.float32(spec.gain_e_per_adu) + np.float32(spec.bias_adu)
    np.rint(adu, out=adu)
    np.clip(adu, 0.0, spec.saturate_adu, out=adu)
    return adu, frame_header(spec)


def frame_header(spec: FrameSpec) -> fits.Header:
    """The header a camera would write: the (possibly wrong) WCS and the calibration."""
    h = fits.Header()
    h["BUNIT"] = ("adu", "pixel unit")
    h["EXPTIME"] = (spec.exposure_s, "[s] exposure time")
    h["FILTER"] = (spec.band, "band")
    h["GAIN"] = (spec.gain_e_per_adu, "[e-/ADU]")
    h["RDNOISE"] = (spec.read_noise_e, "[e-] read noise")
    h["SATURATE"] = (spec.saturate_adu, "[ADU] saturation level (raw, bias included)")
    h["MAGZP"] = (round(spec.magzp, 4), "AB mag of 1 ADU in the exposure (bias removed)")
    h["SEEING"] = (spec.seeing_fwhm_arcsec, "[arcsec] PSF FWHM (simulated)")
    h["SKYMAG"] = (spec.sky_mag_arcsec2, "[mag/arcsec2] sky brightness (simulated)")
    h["PSF"] = (spec.psf, "simulated PSF profile")
    w = spec.header_wcs().wcs
    for i in (1, 2):
        h[f"CTYPE{i}"] = w.ctype[i - 1]
        h[f"CUNIT{i}"] = "deg"
        h[f"CRVAL{i}"] = float(w.crval[i - 1])
        h[f"CRPIX{i}"] = float(w.crpix[i - 1])
    for i in (1, 2):
        for j in (1, 2):
            h[f"CD{i}_{j}"] = float(w.cd[i - 1, j - 1])
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    h["SIMWCSDX"] = (spec.header_offset_arcsec[0], "[arcsec] WCS east error (simulated)")
    h["SIMWCSDY"] = (spec.header_offset_arcsec[1], "[arcsec] WCS north error (simulated)")
    h["SIMWCSRT"] = (spec.header_rotation_deg, "[deg] WCS rotation error (simulated)")
    return h


def write_frame(path, image: np.ndarray, header: fits.Header) -> None:
    fits.PrimaryHDU(data=image, header=header).writeto(path, overwrite=True)


def star_field(spec: FrameSpec, n: int, rng: np.random.Generator, mag_bright: float = 12.0,
               mag_faint: float | None = None, slope: float = 0.3,
               margin_px: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` stars uniform over the frame (plus ``margin_px`` around it) with counts
    rising as 10^(slope m) up to ``mag_faint`` (default: 1.5 mag past the PSF limit)."""
    faint = spec.psf_limit() + 1.5 if mag_faint is None else mag_faint
    x = rng.uniform(-margin_px - 0.5, spec.nx - 0.5 + margin_px, n)
    y = rng.uniform(-margin_px - 0.5, spec.ny - 0.5 + margin_px, n)
    ra, dec = spec.true_wcs().wcs_pix2world(x, y, 0)
    k = slope * math.log(10.0)
    u = rng.uniform(0.0, 1.0, n)  # inverse CDF of p(m) ~ exp(k m) on [bright, faint]
    mag = np.log(np.exp(k * mag_bright) + u * (np.exp(k * faint) - np.exp(k * mag_bright))) / k
    return ra % 360.0, dec, mag
