"""The INDI bridge's ``--photometry`` (docs/indi.md, "Photometry of the frames"): each
exposure's frame, received from the camera as a BLOB, paired with that exposure, given a
WCS if it has none, and handed to the photometry worker (``drivers/framephot.py``); the
worker's ``detections`` events go to the brain with the device's events.

Nothing here measures anything: the protocol thread only pairs, reads the FITS bytes and
submits (``FrameReducer.submit`` never blocks).
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from drivers.indi.client import Blob, IndiClient

try:  # the `photometry` extra (sep); without it --photometry says so in one line
    from drivers.framephot import FrameMeta, FrameReducer
    from drivers.photometry import PhotometryError
    from drivers.photometry.astrometry import header_wcs
except ModuleNotFoundError as exc:  # pragma: no cover - every test venv installs it
    MISSING: str | None = exc.name
    FrameMeta = FrameReducer = PhotometryError = header_wcs = None  # type: ignore
else:
    MISSING = None

log = logging.getLogger("sitian.indi")

PRIMARY_CHIP = "CCD1"  # the camera's BLOB vector of the primary chip's frames
FRAME_TIMEOUT_S = 60.0  # a frame not received this long after its exposure: none
MAX_EXPECTED = 8  # exposures waiting for their frame; beyond this the oldest is given up
ARCSEC_PER_RADIAN = 206264.806


@dataclass
class Expected:
    """An exposure whose frame has not arrived yet."""

    meta: FrameMeta
    ccd: str
    t_request: float  # monotonic time the exposure was requested
    deadline: float  # monotonic time after which the frame is given up
    pointing: dict  # ICRS ra_deg/dec_deg of the mount at mid-exposure ({} if unknown)


def open_reducer(photometry: bool, reference=None, history_dir=None) -> FrameReducer | None:
    """The photometry worker for ``--photometry`` (None without it); raises ValueError
    with one line for a missing extra or a bad ``--reference`` (PhotometryError) and
    OSError for a ``--frame-history`` that cannot be made."""
    if not photometry:
        return None
    if MISSING is not None:
        raise ValueError(f"--photometry needs the photometry extra ({MISSING} is not "
                         "installed): pip install 'sitian-brain[photometry]'")
    return FrameReducer(reference=reference, history_dir=history_dir)


def read_fits(data: bytes) -> tuple[np.ndarray, fits.Header]:
    """The first 2-D image of a FITS file (plain or tile-compressed) and its header;
    ValueError with one line if there is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            with fits.open(io.BytesIO(data), lazy_load_hdus=False) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.header.get("NAXIS") == 2:
                        return np.asarray(hdu.data), hdu.header.copy()
    except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"not a readable FITS file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    raise ValueError("the FITS file holds no 2-D image")


def pointing_wcs(header: fits.Header, shape: tuple[int, int], ra_deg: float,
                 dec_deg: float, scale_arcsec: float, rotation_deg: float) -> None:
    """Write into ``header`` the WCS INDI's camera drivers write (``WCS_CONTROL``): a TAN
    projection centred on the mount's ICRS pointing, both axes ``+scale`` (RA and Dec
    grow with the pixel index, as in INDI's top-down frames), turned by ``CROTA2 =
    -rotation`` (INDI's ``CCD_ROTATION``)."""
    ny, nx = shape
    s = scale_arcsec / 3600.0
    cards = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
             "CRVAL1": float(ra_deg) % 360.0, "CRVAL2": float(dec_deg),
             "CRPIX1": (nx + 1) / 2.0, "CRPIX2": (ny + 1) / 2.0, "CDELT1": s, "CDELT2": s,
             "CROTA2": (-float(rotation_deg)) % 360.0, "RADESYS": "ICRS", "EQUINOX": 2000.0}
    for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2",
                "CROTA1", "RADECSYS"):
        header.remove(key, ignore_missing=True, remove_all=True)
    for key, value in cards.items():
        header[key] = value
    header["WCSSRC"] = ("bridge", "WCS from the mount's pointing (drivers.indi)")


def header_scale(header: fits.Header) -> float | None:
    """Arcseconds per pixel from the header's binned pixel size and focal length (INDI
    writes ``XPIXSZ`` and, once it knows the telescope's focal length, ``FOCALLEN``)."""
    try:
        px = float(header.get("XPIXSZ", header.get("PIXSIZE1", math.nan)))
        fl = float(header.get("FOCALLEN", math.nan))
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(px) and math.isfinite(fl) and px > 0 and fl > 0):
        return None
    return ARCSEC_PER_RADIAN * px * 1e-3 / fl


class IndiFrames:
    """Exposures waiting for their frames, the frames' preparation, and the worker.

    ``expect`` (when an exposure finished) records the exposure; ``events`` (on every
    turn of the protocol loop) takes each exposure's frame from the client (the first
    BLOB of the camera's primary chip received after the exposure was requested and
    before the next one was), submits it, and returns the worker's finished events."""

    def __init__(self, client: IndiClient, reducer: FrameReducer,
                 pixel_scale_arcsec: float | None = None, rotation_deg: float = 0.0,
                 timeout_s: float = FRAME_TIMEOUT_S):
        self.client, self.reducer = client, reducer
        self.pixel_scale = pixel_scale_arcsec
        self.rotation = float(rotation_deg)
        self.timeout_s = float(timeout_s)
        self.expected: deque[Expected] = deque()
        self.stats = {"frames": 0, "missing": 0, "unusable": 0}
        self.last_note: str | None = None

    def expect(self, meta: FrameMeta, ccd: str, t_request: float, pointing: dict) -> None:
        if len(self.expected) >= MAX_EXPECTED:
            old = self.expected.popleft()
            self._give_up(old, f"more than {MAX_EXPECTED} exposures wait for their frames")
        self.expected.append(Expected(meta, ccd, t_request,
                                      time.monotonic() + self.timeout_s, dict(pointing)))

    def _give_up(self, exp: Expected, why: str) -> None:
        self.stats["missing"] += 1
        self.last_note = f"{exp.meta.obs_id}: {why}"
        log.warning("no frame for %s (field %d): %s; no detections", exp.meta.obs_id,
                    exp.meta.field_id, why)

    def _unusable(self, exp: Expected, why: str) -> None:
        self.stats["unusable"] += 1
        self.last_note = f"{exp.meta.obs_id}: {why}"
        log.warning("frame %s (field %d) not measured: %s", exp.meta.obs_id,
                    exp.meta.field_id, why)

    def events(self, ccd: str, exposing: bool) -> list[tuple[str, dict]]:
        """Pair and submit the frames that arrived, give up those overdue, and return the
        worker's finished events. ``exposing``: an exposure of the bridge's is running
        (its frame may come before it finishes); otherwise a frame no exposure waits for
        is dropped at once rather than held."""
        now = time.monotonic()
        if not self.expected and not exposing:
            self.client.take_blob(ccd, PRIMARY_CHIP, math.inf)  # drops any left
        while self.expected:
            exp = self.expected[0]
            nxt = self.expected[1].t_request if len(self.expected) > 1 else math.inf
            blob = self.client.take_blob(exp.ccd, PRIMARY_CHIP, exp.t_request, nxt)
            if blob is None:
                if now <= exp.deadline:
                    break
                self.expected.popleft()
                self._give_up(exp, f"the camera sent none within {self.timeout_s:.0f} s")
                continue
            self.expected.popleft()
            self._submit(exp, blob)
        return self.reducer.events()

    def _submit(self, exp: Expected, blob: Blob) -> None:
        try:
            data, header = read_fits(blob.data)
        except ValueError as exc:
            self._unusable(exp, f"the camera's {blob.format} frame is {exc}")
            return
        self.stats["frames"] += 1
        # INDI's GAIN is the camera's gain setting, not electrons per ADU: keep it aside.
        if "GAIN" in header:
            header["CAMGAIN"] = (header["GAIN"], "INDI GAIN: the gain setting")
            del header["GAIN"]
        if "SATURATE" not in header and np.issubdtype(data.dtype, np.integer):
            header["SATURATE"] = (float(np.iinfo(data.dtype).max), "[ADU] integer maximum")
        try:
            header_wcs(header)
        except PhotometryError as no_wcs:
            scale = self.pixel_scale or header_scale(header)
            if not scale:
                self._unusable(exp, f"{no_wcs}, and no pixel scale to make one from the "
                               "mount's pointing (give --pixel-scale, or the camera's "
                               "focal length)")
                return
            if not exp.pointing:
                self._unusable(exp, f"{no_wcs}, and the mount reported no position")
                return
            pointing_wcs(header, data.shape, exp.pointing["ra_deg"],
                         exp.pointing["dec_deg"], scale, self.rotation)
        self.reducer.submit(exp.meta, data, header)

    def summary(self) -> dict:
        """For the device state map."""
        r = self.reducer.stats
        return {"frames": self.stats["frames"], "missing": self.stats["missing"],
                "failed": self.stats["unusable"] + r["failed"], "dropped": r["dropped"],
                "waiting": self.reducer.pending + len(self.expected)}

    def close(self) -> None:
        self.reducer.close()
