"""The Alpaca bridge's ``--photometry`` (docs/alpaca.md, "Photometry"): each exposure's
image downloaded on a thread of its own, given a FITS header with a celestial WCS (the
mount's ICRS pointing at mid-exposure, the camera's pixel scale and rotation), measured
by the photometry pipeline in a worker process (:mod:`drivers.framephot`), and sent to
the brain as the exposure's ``detections`` events.

* **Transfer.** One ``GET .../camera/N/imagearray`` asking for ``application/imagebytes``
  (the binary form, decoded with one ``np.frombuffer``), else the JSON form, parsed row
  by row so the GIL is free between rows. Not alpyca's ``ImageArray``: it holds alpyca's
  process-wide request lock for the whole download (the device polls would wait behind
  it) and has no timeout.
* **Orientation.** ASCOM's ImageArray is ``[x][y]`` with pixel ``[0][0]`` at the top left
  of the image as shown; the frame is turned into FITS order (numpy ``[row=y][col=x]``,
  row 0 at the bottom): ``array.T[::-1]``. ``rotation`` is the position angle of the
  frame's up (+y) direction, north through east; not ``mirrored``, east is to the left
  when north is up (the sky as seen, and as the simulator renders it).
* **Bounded.** At most one frame downloads per camera: the next ``expose`` waits for the
  previous frame's download before it sends ``StartExposure`` (a camera has one image
  buffer: a new exposure may replace or invalidate the image being read). A download
  still running after ``wait_limit_s`` is abandoned (its frame is not measured). The
  pipeline holds at most ``MAX_PENDING`` frames (drivers/framephot.py).
* **Failures.** A frame that cannot be downloaded or measured is logged in one line and
  sends nothing; the bridge goes on serving.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import requests
from alpaca.camera import Camera
from astropy.io import fits

from drivers.alpaca.client import ASCOM_ERRORS, NETWORK_ERRORS, AlpacaClient, AlpacaError
from drivers.alpaca.client import describe as _describe
from drivers.framephot import FrameMeta, FrameReducer

log = logging.getLogger("sitian.alpaca")

ARCSEC_PER_RAD = 180.0 * 3600.0 / math.pi
# ImageBytes transmission element types (ASCOM Alpaca API reference, "ImageBytes")
ELEMENT_TYPES = {1: "<i2", 2: "<i4", 3: "<f8", 4: "<f4", 5: "<u8", 6: "u1", 7: "<i8",
                 8: "<u2", 9: "<u4"}
IMAGEBYTES_HEADER = 44  # bytes: 11 little-endian int32
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 60.0  # the image request's (per socket read)
PER_FRAME = ("BinX", "BinY", "StartX", "StartY", "ElectronsPerADU", "FullWellCapacity",
             "MaxADU")


class FrameError(Exception):
    """A frame that cannot be downloaded or decoded: the reason in one line."""


@dataclass(frozen=True)
class FrameOptions:
    """``--pixel-scale`` (arcsec per sensor pixel at 1x1 binning; None: the camera's
    ``PixelSizeX/Y`` and the telescope's ``FocalLength``), ``--rotation``,
    ``--mirrored``."""

    pixel_scale: float | None = None
    rotation_deg: float = 0.0
    mirrored: bool = False


@dataclass(frozen=True)
class Exposure:
    """What the bridge knows of a finished exposure when it asks for its frame."""

    meta: FrameMeta
    ra_deg: float  # ICRS, the mount at mid-exposure
    dec_deg: float
    t_start: float  # world Unix seconds
    seconds: float


# Decoding ----------------------------------------------------------------------------
def decode_imagebytes(body: bytes) -> np.ndarray:
    """An ``application/imagebytes`` answer as a 2-D array in ASCOM order ``[x][y]``."""
    if len(body) < IMAGEBYTES_HEADER:
        raise FrameError(f"short ImageBytes answer ({len(body)} bytes)")
    (_version, error, _client, _device, start, _element, xmit, rank, d1, d2,
     _d3) = (int(v) for v in np.frombuffer(body, "<i4", 11))
    if error:
        text = body[start:].decode("utf-8", "replace").strip()
        raise FrameError(f"the camera answered ASCOM error {error:#x}: {text[:200]}")
    if rank != 2:
        raise FrameError(f"a rank {rank} image (colour planes) is not measured")
    dtype = ELEMENT_TYPES.get(xmit)
    if dtype is None:
        raise FrameError(f"unknown ImageBytes element type {xmit}")
    n = d1 * d2
    if d1 <= 0 or d2 <= 0 or len(body) < start + n * np.dtype(dtype).itemsize:
        raise FrameError(f"ImageBytes answer too short for {d1} x {d2} pixels")
    return np.frombuffer(body, dtype, n, start).reshape(d1, d2)


def decode_json_image(body: bytes) -> np.ndarray:
    """A JSON ``imagearray`` answer as a 2-D array in ASCOM order ``[x][y]``. Parsed row
    by row (``np.fromstring``), not with ``json.loads`` of the whole answer: that holds
    the GIL for about a second on a 2k x 2k frame; this lets other threads run between
    rows."""
    i = body.find(b'"Value"')
    if i < 0:
        raise FrameError(_json_error(body) or "the image answer has no Value")
    start = i + len(b'"Value"')
    while start < len(body) and body[start] in b" \t\r\n:":
        start += 1
    if not body.startswith(b"[", start):  # no image: an error answer, small
        raise FrameError(_json_error(body) or "the image answer's Value is not an array")
    j, depth = start, 0
    while 0 <= j < len(body) and body[j] in b"[ \t\r\n":
        depth += body[j] == ord("[")
        j += 1
    if depth != 2:
        raise FrameError(f"a rank {depth} image (colour planes) is not measured"
                         if depth == 3 else "the image answer's Value is not a 2-D array")
    rows: list[np.ndarray] = []
    pos = j  # the first value of the first row
    while True:  # a row a turn: other threads run between rows
        end = body.find(b"]", pos)
        if end < 0:
            raise FrameError("the image answer's Value is not closed")
        rows.append(np.fromstring(body[pos:end], sep=","))
        if rows[-1].size == 0 or rows[-1].size != rows[0].size:
            raise FrameError(f"row {len(rows) - 1} of the image has {rows[-1].size} values, "
                             f"row 0 {rows[0].size}")
        if body[end + 1:end + 64].lstrip().startswith(b"]"):  # the array's end
            break
        pos = body.find(b"[", end) + 1
    err = _json_error(body[:start] + b"null" + body[end + 1:].lstrip()[1:])
    if err:
        raise FrameError(err)
    return np.vstack(rows)


def _json_error(text: bytes) -> str | None:
    try:
        j = json.loads(text)
    except ValueError:
        return "the image answer is neither ImageBytes nor JSON"
    n = j.get("ErrorNumber", 0) if isinstance(j, dict) else 0
    if n:
        return f"the camera answered ASCOM error {int(n):#x}: {str(j.get('ErrorMessage'))[:200]}"
    return None


def fits_order(image_xy: np.ndarray) -> np.ndarray:
    """ASCOM ``[x][y]`` (row 0 at the top as shown) to a FITS-ordered C array: numpy
    ``[y][x]``, row 0 at the bottom."""
    return np.ascontiguousarray(image_xy.T[::-1])


# The header --------------------------------------------------------------------------
def cd_matrix(scale_x: float, scale_y: float, rotation_deg: float,
              mirrored: bool) -> np.ndarray:
    """CD (degrees per pixel) of a FITS-ordered frame: the +y axis at position angle
    ``rotation_deg`` (north through east); east to the left of north unless
    ``mirrored``. ``scale_x``/``scale_y``: arcsec per frame pixel."""
    t = math.radians(rotation_deg)
    sx = (scale_x if mirrored else -scale_x) / 3600.0
    sy = scale_y / 3600.0
    # columns: the sky direction (east, north) of +x and of +y
    return np.array([[sx * math.cos(t), sy * math.sin(t)],
                     [-sx * math.sin(t), sy * math.cos(t)]])


def frame_header(shape: tuple[int, int], exp: Exposure, scale_x: float, scale_y: float,
                 axis_px: tuple[float, float], rotation_deg: float = 0.0,
                 mirrored: bool = False, gain: float | None = None,
                 saturate: float | None = None, binning: tuple[int, int] = (1, 1)
                 ) -> fits.Header:
    """The FITS header of a frame of ``shape`` (rows, columns; FITS order): a TAN WCS
    with the exposure's ICRS pointing at ``axis_px`` (0-based x, y: the optical axis),
    the exposure's times and the camera's GAIN and SATURATE where known."""
    ny, nx = shape
    cd = cd_matrix(scale_x, scale_y, rotation_deg, mirrored)
    h = fits.Header()
    h["NAXIS"] = 2
    h["NAXIS1"], h["NAXIS2"] = int(nx), int(ny)
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["RADESYS"] = "ICRS"
    h["CRVAL1"], h["CRVAL2"] = float(exp.ra_deg), float(exp.dec_deg)
    h["CRPIX1"], h["CRPIX2"] = float(axis_px[0]) + 1.0, float(axis_px[1]) + 1.0
    h["CD1_1"], h["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    h["CD2_1"], h["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    h["DATE-OBS"] = datetime.fromtimestamp(exp.t_start, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3]
    h["MJD-OBS"] = exp.t_start / 86400.0 + 40587.0
    h["EXPTIME"] = float(exp.seconds)
    h["XBINNING"], h["YBINNING"] = int(binning[0]), int(binning[1])
    h["FILTER"] = exp.meta.band
    h["OBSID"] = exp.meta.obs_id
    if gain is not None:
        h["GAIN"] = float(gain)
    if saturate is not None:
        h["SATURATE"] = float(saturate)
    return h


def _positive(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


class _AwaitDownload:
    """A step of ``expose``, before ``StartExposure``: the previous frame downloaded."""

    def __init__(self, frames: AlpacaFrames):
        self.frames = frames
        self.t0 = 0.0

    def start(self) -> bool:
        self.t0 = time.monotonic()
        return not self.frames.downloading()

    def done(self) -> bool:
        if not self.frames.downloading():
            return True
        if time.monotonic() - self.t0 > self.frames.wait_limit_s:
            self.frames.abandon()
            return True
        return False


class AlpacaFrames:
    """The frames of one Alpaca camera: downloaded (one at a time, on a thread), given a
    header, measured by ``reducer`` (a :class:`FrameReducer`, owned from here on).

    The device host's thread calls :meth:`fetch` (an exposure finished),
    :meth:`events` (each loop turn) and :meth:`wait_step` (a step of the next
    ``expose``); the download thread does the HTTP requests, the decoding and the
    header."""

    def __init__(self, client: AlpacaClient, reducer: FrameReducer,
                 options: FrameOptions | None = None, wait_limit_s: float = 120.0):
        self.client, self.reducer = client, reducer
        self.options = options or FrameOptions()
        self.wait_limit_s = float(wait_limit_s)
        self.scale_xy: tuple[float, float] | None = None  # arcsec per sensor pixel (1x1)
        self.sensor_xy: tuple[int, int] | None = None  # CameraXSize, CameraYSize
        self.scale_source = ""
        self._camera: Camera | None = None  # its own: alpyca's sessions are per object
        self._job: tuple[Exposure, Future] | None = None
        self.stats: dict[str, float] = {"downloaded": 0, "download_failed": 0,
                                        "abandoned": 0, "submit_failed": 0,
                                        "download_s_max": 0.0,
                                        "loop_s_max": 0.0}
        self.last_download: dict[str, Any] = {}

    # Start-up (the device's start) -------------------------------------------------------
    def start(self, ask) -> None:
        """Learn the sensor and the pixel scale; ``ask(what, fn)`` runs ``fn`` on the
        client's worker and waits. Raises :class:`AlpacaError` naming what is missing."""
        cam, tel = self.client.device("camera"), self.client.device("telescope")
        self._camera = Camera(cam.address, cam.device_number)

        def read(dev, prop: str):
            try:
                return ask(prop, lambda: getattr(dev, prop))
            except (*ASCOM_ERRORS, *NETWORK_ERRORS):
                return None

        xs, ys = read(cam, "CameraXSize"), read(cam, "CameraYSize")
        if _positive(xs) and _positive(ys):
            self.sensor_xy = (int(xs), int(ys))
        if self.options.pixel_scale is not None:
            s = float(self.options.pixel_scale)
            self.scale_xy, self.scale_source = (s, s), "--pixel-scale"
        else:
            px, py = _positive(read(cam, "PixelSizeX")), _positive(read(cam, "PixelSizeY"))
            focal = _positive(read(tel, "FocalLength"))
            if px is None or focal is None:
                raise AlpacaError("--photometry: the camera's PixelSizeX "
                                  f"({'none' if px is None else f'{px:g} um'}) and the "
                                  "telescope's FocalLength ("
                                  f"{'none' if focal is None else f'{focal:g} m'}) do not "
                                  "give the pixel scale: give --pixel-scale ARCSEC")
            py = py or px
            self.scale_xy = (ARCSEC_PER_RAD * px * 1e-6 / focal,
                             ARCSEC_PER_RAD * py * 1e-6 / focal)
            self.scale_source = f"PixelSizeX {px:g} um, FocalLength {focal:g} m"
        log.info("photometry: %.4f x %.4f arcsec/pixel (%s), rotation %g deg%s, sensor %s",
                 *self.scale_xy, self.scale_source, self.options.rotation_deg,
                 ", mirrored" if self.options.mirrored else "",
                 "x".join(map(str, self.sensor_xy)) if self.sensor_xy else "unknown")

    # The device host's thread ------------------------------------------------------------
    def downloading(self) -> bool:
        return self._job is not None and not self._job[1].done()

    def wait_step(self) -> _AwaitDownload:
        return _AwaitDownload(self)

    def abandon(self) -> None:
        """Give up the running download (its result, if it ever comes, is dropped)."""
        if self._job is not None:
            exp = self._job[0]
            log.warning("frame %s: download still running after %.0f s: abandoned",
                        exp.meta.obs_id, self.wait_limit_s)
            self.stats["abandoned"] += 1
            self._job = None

    def fetch(self, exp: Exposure) -> None:
        """Download the frame of ``exp`` (just finished) on a thread of its own."""
        t = time.perf_counter()
        self._collect()
        if self.downloading():  # not after a wait step; kept for safety
            log.warning("frame %s not downloaded: frame %s is still downloading",
                        exp.meta.obs_id, self._job[0].meta.obs_id)
            return
        fut: Future = Future()
        threading.Thread(target=self._download, args=(exp, fut),
                         name=f"alpaca-frame-{exp.meta.obs_id}", daemon=True).start()
        self._job = (exp, fut)
        self._loop_time(t)

    def events(self) -> list[tuple[str, dict]]:
        """The finished frames' ``detections`` events (after handing a downloaded frame
        to the pipeline)."""
        t = time.perf_counter()
        self._collect()
        out = self.reducer.events()
        self._loop_time(t)
        return out

    def _loop_time(self, t0: float) -> None:
        self.stats["loop_s_max"] = max(self.stats["loop_s_max"], time.perf_counter() - t0)

    def _collect(self) -> None:
        if self._job is None or not self._job[1].done():
            return
        exp, fut = self._job
        self._job = None
        exc = fut.exception()
        if exc is not None:
            self.stats["download_failed"] += 1
            log.warning("frame %s (field %d) not downloaded: %s", exp.meta.obs_id,
                        exp.meta.field_id, exc if isinstance(exc, FrameError)
                        else _describe(exc))
            return
        data, header = fut.result()
        try:
            self.reducer.submit(exp.meta, data, header)
        except (BrokenProcessPool, RuntimeError) as exc:  # the worker died between frames
            self.stats["submit_failed"] += 1
            log.error("frame %s (field %d) not measured: the photometry worker is gone (%s)",
                      exp.meta.obs_id, exp.meta.field_id, " ".join(str(exc).split()))

    def close(self) -> None:
        self.reducer.close()

    # The download thread -----------------------------------------------------------------
    def _download(self, exp: Exposure, fut: Future) -> None:
        try:
            fut.set_result(self._frame(exp))
        except Exception as exc:  # reported on the loop's thread, in one line
            fut.set_exception(exc)

    def _frame(self, exp: Exposure) -> tuple[np.ndarray, fits.Header]:
        cam = self._camera
        t0 = time.perf_counter()
        got: dict[str, Any] = {}
        for prop in PER_FRAME:
            try:
                got[prop] = getattr(cam, prop)
            except ASCOM_ERRORS:
                got[prop] = None
        t1 = time.perf_counter()
        r = requests.get(f"{cam.base_url}/imagearray",
                         params={"ClientID": 1, "ClientTransactionID": 0},
                         headers={"Accept": "application/imagebytes"},
                         timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        if r.status_code != 200:
            raise FrameError(f"HTTP {r.status_code} {r.reason}: {r.text[:200]}")
        body = r.content
        t2 = time.perf_counter()
        binary = "imagebytes" in r.headers.get("content-type", "")
        image = decode_imagebytes(body) if binary else decode_json_image(body)
        data = fits_order(image)
        bx, by = (int(_positive(got["BinX"]) or 1), int(_positive(got["BinY"]) or 1))
        ny, nx = data.shape
        if self.sensor_xy is not None:  # the optical axis: the sensor's centre
            x0 = (self.sensor_xy[0] / bx - 1.0) / 2.0 - float(got["StartX"] or 0)
            y_top = (self.sensor_xy[1] / by - 1.0) / 2.0 - float(got["StartY"] or 0)
            axis = (x0, (ny - 1.0) - y_top)
        else:
            axis = ((nx - 1.0) / 2.0, (ny - 1.0) / 2.0)
        gain = _positive(got["ElectronsPerADU"])
        limits = [_positive(got["MaxADU"])]
        if gain is not None and _positive(got["FullWellCapacity"]):
            limits.append(_positive(got["FullWellCapacity"]) / gain)
        saturate = min((v for v in limits if v is not None), default=None)
        sx, sy = self.scale_xy
        header = frame_header(data.shape, exp, sx * bx, sy * by, axis,
                              self.options.rotation_deg, self.options.mirrored, gain,
                              saturate, (bx, by))
        t3 = time.perf_counter()
        self.stats["downloaded"] += 1
        self.stats["download_s_max"] = max(self.stats["download_s_max"], t2 - t1)
        self.last_download = {"obs_id": exp.meta.obs_id, "bytes": len(body),
                              "transfer": "imagebytes" if binary else "json",
                              "properties_s": t1 - t0, "download_s": t2 - t1,
                              "convert_s": t3 - t2, "shape": data.shape}
        log.info("frame %s: %d x %d %s (%s, %.1f MB) downloaded in %.3f s, converted in "
                 "%.3f s", exp.meta.obs_id, nx, ny, data.dtype, self.last_download["transfer"],
                 len(body) / 1e6, t2 - t1, t3 - t2)
        return data, header
