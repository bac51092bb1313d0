"""The pipeline's options, its one error type and its flag bits (docs/photometry.md)."""

from __future__ import annotations

from dataclasses import dataclass

# Flag bits of an output row. 1-128 are sep's (extraction and aperture flags); 256 and
# 512 are this pipeline's.
FLAG_MERGED = 1  # sep OBJ_MERGED: deblended from a blend
FLAG_TRUNCATED = 2  # sep OBJ_TRUNC: the object touches the frame's border
FLAG_APER_TRUNC = 16  # sep APER_TRUNC: the aperture runs off the frame
FLAG_APER_MASKED = 32  # sep APER_HASMASKED: a masked (NaN) pixel in the aperture
FLAG_SATURATED = 256  # a pixel at or above SATURATE within the aperture (+1 px)
FLAG_EDGE = 512  # centre closer to the border than max(3 FWHM, aperture + 1 px)
# Rows with any of these are not used for the WCS fit, the zero point or the limit.
BAD_FOR_CALIBRATION = (FLAG_MERGED | FLAG_TRUNCATED | FLAG_APER_TRUNC | FLAG_APER_MASKED
                       | 4 | 8 | 64 | 128 | FLAG_SATURATED | FLAG_EDGE)


class PhotometryError(ValueError):
    """A frame or reference that cannot be processed: the reason in one line."""


@dataclass(frozen=True)
class PhotometryConfig:
    # Background (sep.Background): mesh size and median filter, in pixels / meshes.
    back_size: int = 64
    back_filter: int = 3
    # Detection: threshold in sigma of the matched-filtered background, minimum area.
    detect_thresh: float = 3.0
    minarea: int = 3
    deblend_cont: float = 0.005
    fwhm_guess_px: float = 2.5  # used only when no star above 20 sigma gives the FWHM
    # Photometry: aperture radius = max(aperture_fwhm x FWHM, min_aperture_px).
    aperture_fwhm: float = 0.75
    min_aperture_px: float = 1.5
    min_snr: float = 5.0  # rows below this signal-to-noise are dropped
    edge_fwhm: float = 3.0
    gain: float | None = None  # e-/ADU; None: header GAIN (absent: no source Poisson term)
    saturate: float | None = None  # ADU; None: header SATURATE (absent: no saturation)
    # WCS refinement against a reference catalogue.
    max_offset_arcsec: float = 120.0  # the header's pointing may be off by this much
    max_rotation_deg: float = 1.0  # ... and turned by this much
    vote_stars: int = 150  # brightest clean detections used in the offset vote
    min_matches: int = 8  # fewer matched reference stars: an error
    match_snr: float = 10.0  # detections used for the WCS fit
    # Zero point from the matched reference stars.
    zp_min_snr: float = 20.0
    zp_clip_sigma: float = 3.0
    min_zp_stars: int = 5
