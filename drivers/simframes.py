"""Rehearsals from frames (``brain sim-drivers --frames``): each finished exposure of a
simulated telescope is rendered as a camera frame (``simulator/frames.py``) and measured by
the photometry pipeline (``drivers/photometry``), and its sources go to the brain as the
exposure's ``detections`` event, instead of the catalogue photometry of
``simulator/photometry.py``. docs/photometry.md, "A rehearsal from frames".

* The frame is a ``frame_px`` square (default 2048, 1.0"/pixel, north up) centred on the
  field: 2.7 % of a 12 deg² field at 2048, 10.8 % at 4096. Detections come only from it.
* The sky in it: the population's sources (their magnitudes at mid-exposure) and a
  steady field of stars, seeded per field (``STAR_*``); seeing and sky brightness are
  those behind the exposure's m5 (``observatory/depth.py``) and the zero point reaches
  that m5. The header's WCS is off by a seeded pointing error and rotation.
* The pipeline refines the WCS and fits the zero point against the field's stars to the
  reference's depth (``simulator.reference.REF_DEPTH``), then drops the detections that
  are field stars (``find_changes`` against the star catalogue: matched within 2" and not
  changed by more than 5 sigma). What is left is sent: the population's sources, and the
  pipeline's spurious rows (noise peaks, blends, stars it measured wrongly).
* ``ref_mag``: the nearest entry within 2" of the survey's reference (the field's stars
  and the population's reference magnitudes, ``simulator/reference.py``), nil where none.
  ``truth`` (the simulator-only extension): the nearest population source in the frame
  within 1.5", -1 for none.

Rendering and measuring a 2048² frame takes 0.8-1.5 s of CPU. ``sep`` holds the GIL
while it works (0.1-0.3 s at a time on 2048²-4096² frames, measured), so the frames are
made in a worker *process* (``spawn``: a script using :class:`FramesPath` needs the
``if __name__ == "__main__":`` guard), never on a thread of the device host's process:
the protocol loop keeps answering. :class:`FootprintPath` is the catalogue rehearsal cropped to the
same footprints, the comparison for a frames rehearsal (``--frame-footprint``).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import time
import zlib
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from astropy.wcs import WCS

from drivers.photometry import (
    BAD_FOR_CALIBRATION,
    Catalogue,
    PhotometryError,
    find_changes,
    match_sky,
    process_frame,
)
from drivers.photometry.config import FLAG_MERGED
from observatory.depth import seeing_at, sky_delta_mag
from observatory.sky import FieldGrid
from observatory.times import unix_to_mjd
from simulator.frames import FrameSpec, render_frame, star_field
from simulator.photometry import Detections
from simulator.reference import REF_DEPTH

log = logging.getLogger("drivers.simframes")

FRAME_PX = 2048  # default frame side (pixels)
PIXEL_SCALE_ARCSEC = 1.0  # the camera's pixel scale (not in the config; simulator/frames.py)
MARGIN_PX = 16  # sources this far outside the frame still spill light into it
# The steady stars of a field: a uniform surface density brighter than STAR_FAINT_R, counts
# rising as 10^(STAR_SLOPE m) from STAR_BRIGHT_R (high Galactic latitude; no gradient).
STAR_DENSITY_DEG2 = 4000.0
STAR_BRIGHT_R, STAR_FAINT_R, STAR_SLOPE = 13.0, 22.5, 0.3
STAR_REF_ERR = 0.01  # the star catalogue's magnitude error (mag)
STAR_CACHE = 256  # fields whose stars a worker keeps
POINTING_ERR_ARCSEC = 20.0  # sigma per axis of the header's pointing error
ROTATION_ERR_DEG = 0.05  # sigma of the header's rotation error
MATCH_ARCSEC = 2.0  # the star catalogue and the reference: match radius
CHANGE_SIGMA = 5.0  # a field star this many sigma off its catalogue magnitude is reported
TRUTH_ARCSEC = 1.5  # a detection is the population source within this distance
# Rows not sent: those bad for calibration, except deblended ones (FrameResult.sources()
# drops those too; in a crowded field that loses every source with a neighbour a few
# arcseconds away, whose aperture photometry is sound).
SENT_BAD = BAD_FOR_CALIBRATION & ~FLAG_MERGED
SECONDS_PER_FRAME_2048 = 1.5  # CPU per 2048² frame, render + pipeline (this machine)
_SEED_TAG, _STAR_TAG = 0xF4A3E, 0x57A25


def frame_fraction(frame_px: int, side_deg: float) -> float:
    """Fraction of a field of side ``side_deg`` that a frame covers."""
    return min(1.0, (frame_px * PIXEL_SCALE_ARCSEC / 3600.0 / side_deg) ** 2)


def frame_seconds(frame_px: int) -> float:
    """Rough CPU seconds to render and measure one frame (scales with its pixels)."""
    return SECONDS_PER_FRAME_2048 * (frame_px / 2048.0) ** 2


def frame_wcs(grid: FieldGrid, field_id: int, frame_px: int) -> WCS:
    """The true WCS of a field's frame (centred on the field, north up)."""
    return FrameSpec(ra_deg=float(grid.ra_deg[field_id]), dec_deg=float(grid.dec_deg[field_id]),
                     nx=frame_px, ny=frame_px, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC,
                     zp_e_per_s=25.0).true_wcs()


def in_frame(wcs: WCS, frame_px: int, ra, dec, margin_px: float = 0.0) -> np.ndarray:
    """True where (ra, dec) falls on the frame (pixel centres 0..frame_px-1), or within
    ``margin_px`` of it."""
    ra, dec = np.asarray(ra, float), np.asarray(dec, float)
    if ra.size == 0:
        return np.zeros(0, bool)
    x, y = wcs.wcs_world2pix(ra, dec, 0)
    lo, hi = -0.5 - margin_px, frame_px - 0.5 + margin_px
    return np.isfinite(x) & np.isfinite(y) & (x >= lo) & (x < hi) & (y >= lo) & (y < hi)


class FrameSky:
    """What a worker needs to make and measure frames: the fields, the population, its
    sources per field and reference magnitudes (picklable: sent once to the worker)."""

    def __init__(self, grid: FieldGrid, population, seed: int, bands, sources: np.ndarray,
                 offsets: np.ndarray, reference: np.ndarray, frame_px: int = FRAME_PX):
        self.grid, self.population, self.seed = grid, population, int(seed)
        self.bands = tuple(bands)
        self.sources, self.offsets, self.reference = sources, offsets, reference
        self.frame_px = int(frame_px)
        self._fields: OrderedDict[int, tuple] = OrderedDict()

    def __getstate__(self):
        return {**self.__dict__, "_fields": OrderedDict()}

    def field(self, field_id: int):
        """The field's frame WCS, its stars (ra, dec, {band: mag}) and the population's
        sources on the frame or its margin (indices, ra, dec)."""
        got = self._fields.get(field_id)
        if got is not None:
            self._fields.move_to_end(field_id)
            return got
        px, wcs = self.frame_px, frame_wcs(self.grid, field_id, self.frame_px)
        spec = FrameSpec(ra_deg=float(self.grid.ra_deg[field_id]),
                         dec_deg=float(self.grid.dec_deg[field_id]), nx=px, ny=px,
                         pixel_scale_arcsec=PIXEL_SCALE_ARCSEC, zp_e_per_s=25.0)
        rng = np.random.default_rng([self.seed, _STAR_TAG, int(field_id)])
        area = ((px + 2 * MARGIN_PX) * PIXEL_SCALE_ARCSEC / 3600.0) ** 2
        n = int(rng.poisson(STAR_DENSITY_DEG2 * area))
        ra, dec, r = star_field(spec, n, rng, STAR_BRIGHT_R, STAR_FAINT_R, STAR_SLOPE,
                                margin_px=MARGIN_PX)
        gr = rng.uniform(0.2, 1.4, n)  # g - r of field stars (halo turn-off to M dwarfs)
        ri = np.clip(0.45 * gr - 0.05 + rng.normal(0.0, 0.05, n), -0.1, None)
        mags = {"g": r + gr, "r": r, "i": r - ri}
        src = self.sources[self.offsets[field_id]:self.offsets[field_id + 1]]
        p = self.population
        on = in_frame(wcs, px, p.ra_deg[src], p.dec_deg[src], MARGIN_PX)
        src = src[on]
        got = (wcs, (ra, dec, mags), (src, p.ra_deg[src], p.dec_deg[src]))
        self._fields[field_id] = got
        if len(self._fields) > STAR_CACHE:
            self._fields.popitem(last=False)
        return got

    def exposure(self, row: tuple, cond: tuple[float, float]) -> dict:
        """One exposure (a row of ``simulator.world``: obs_id, ..., band, field, ..., t_start,
        t_end, ..., m5; ``cond``: seeing FWHM and sky, mag/arcsec²): render, measure, keep
        what is not a steady star. Returns the sent rows' arrays, the limit and a note."""
        obs_id, band, field_id = str(row[0]), str(row[4]), int(row[5])
        b = self.bands.index(band)
        t0, t1, m5 = float(row[8]), float(row[9]), float(row[14])
        _wcs, (s_ra, s_dec, s_mags), (src, p_ra, p_dec) = self.field(field_id)
        s_mag = s_mags.get(band, s_mags["r"])
        rng = np.random.default_rng([self.seed, _SEED_TAG, zlib.crc32(obs_id.encode())])
        east, north = rng.normal(0.0, POINTING_ERR_ARCSEC, 2)
        spec = FrameSpec(ra_deg=float(self.grid.ra_deg[field_id]),
                         dec_deg=float(self.grid.dec_deg[field_id]), nx=self.frame_px,
                         ny=self.frame_px, pixel_scale_arcsec=PIXEL_SCALE_ARCSEC,
                         seeing_fwhm_arcsec=cond[0], sky_mag_arcsec2=cond[1], m5=m5,
                         exposure_s=t1 - t0, band=band,
                         header_offset_arcsec=(float(east), float(north)),
                         header_rotation_deg=float(rng.normal(0.0, ROTATION_ERR_DEG)))
        p_mag = self.population.magnitudes(src, 0.5 * (t0 + t1), b)
        lit = np.isfinite(p_mag)
        data, header = render_frame(spec, np.concatenate([s_ra, p_ra[lit]]),
                                    np.concatenate([s_dec, p_dec[lit]]),
                                    np.concatenate([s_mag, p_mag[lit]]), rng)
        cal = s_mag <= REF_DEPTH[b] if b < len(REF_DEPTH) else np.isfinite(s_mag)
        try:
            res = process_frame(data, header, (s_ra[cal], s_dec[cal], s_mag[cal]))
        except PhotometryError as exc:
            return {**_empty(), "limit": m5, "note": f"frame not measured: {exc}"}
        ok = (res.flags & SENT_BAD) == 0
        ra, dec, mag, err = res.ra_deg[ok], res.dec_deg[ok], res.mag[ok], res.mag_err[ok]
        ch = find_changes(Catalogue(ra, dec, mag, err),
                          Catalogue(s_ra, s_dec, s_mag, np.full(s_mag.size, STAR_REF_ERR)),
                          MATCH_ARCSEC, k=CHANGE_SIGMA)
        keep = np.union1d(ch.new, ch.changed).astype(np.int64)
        ra, dec, mag, err = ra[keep], dec[keep], mag[keep], err[keep]
        # The reference at each: the field's stars and the population's reference entries.
        p_ref = self.reference[src, b]
        has = np.isfinite(p_ref)
        j, _ = match_sky(ra, dec, np.concatenate([s_ra, p_ra[has]]),
                         np.concatenate([s_dec, p_dec[has]]), MATCH_ARCSEC)
        ref_mag = _pick(np.concatenate([s_mag, p_ref[has]]), j, np.inf)
        jt, _ = match_sky(ra, dec, p_ra[lit], p_dec[lit], TRUTH_ARCSEC)
        truth = _pick(src[lit], jt, -1).astype(np.int64)
        return {"ra": ra, "dec": dec, "mag": mag, "err": err, "truth": truth,
                "ref_mag": ref_mag, "note": None,
                "limit": float(res.limiting_mag) if math.isfinite(res.limiting_mag) else m5,
                "rows": len(res), "stars_dropped": int(ok.sum() - keep.size),
                "wcs_rms_arcsec": res.wcs_rms_arcsec, "zero_point_n": res.zero_point.n}


def _empty() -> dict:
    z = np.zeros(0)
    return {"ra": z, "dec": z, "mag": z, "err": z, "truth": np.zeros(0, np.int64),
            "ref_mag": z, "rows": 0, "stars_dropped": 0, "wcs_rms_arcsec": math.nan,
            "zero_point_n": 0}


def _pick(values: np.ndarray, j: np.ndarray, fill) -> np.ndarray:
    """values[j] where j >= 0, else ``fill``."""
    out = np.full(j.shape, fill, dtype=np.result_type(values, np.asarray(fill)))
    hit = j >= 0
    out[hit] = values[j[hit]]
    return out


# The worker process ------------------------------------------------------------------
_SKY: FrameSky | None = None


def _start_worker(sky: FrameSky) -> None:
    global _SKY
    _SKY = sky
    # Ctrl-C and a service's SIGTERM reach the whole process group: the device host
    # stops first, and this worker finishes the frames it is given, then the pool ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _worker_pid() -> int:
    return os.getpid()


def _frames_job(items: list[tuple[tuple, tuple]]) -> list[dict]:
    assert _SKY is not None, "the frames worker was not initialised"
    out = []
    for row, cond in items:
        t = time.perf_counter()
        res = _SKY.exposure(row, cond)
        res["cpu_s"] = time.perf_counter() - t
        out.append(res)
    return out


def _stack(results: list[dict], rows: list[tuple], bands) -> Detections:
    """The exposures' results as one flat :class:`Detections` (``exposure`` indexes
    ``rows``), as the catalogue path gives them."""
    n = [r["ra"].size for r in results]
    exp = np.repeat(np.arange(len(results)), n)
    t_mid = np.array([0.5 * (r[8] + r[9]) for r in rows])
    band = np.array([bands.index(r[4]) for r in rows], dtype=np.int64)

    def cat(key, dtype=float):
        return np.concatenate([r[key] for r in results]).astype(dtype) if results else \
            np.zeros(0, dtype)

    return Detections(exp, cat("ra"), cat("dec"), unix_to_mjd(t_mid[exp]), band[exp],
                      cat("mag"), cat("err"), cat("truth", np.int64), cat("ref_mag"))


class FramesPath:
    """The frames path of :class:`drivers.simdevices.SimArray` (its ``frames``): one
    exposure at a time in a worker process (``spawn``: nothing of the device host's
    threads or sockets is copied)."""

    batch_max = 1  # each exposure's detections go out as soon as its frame is measured

    def __init__(self, array, frame_px: int = FRAME_PX):
        if array.photometry is None:
            raise ValueError("--frames needs the simulated sky (a population)")
        ph, cfg = array.photometry, array.config
        self.config, self.frame_px = cfg, int(frame_px)
        self.bands = tuple(cfg.camera.bands)
        self.sky = FrameSky(array.cache.grid, ph.population, ph.seed, self.bands, ph.sources,
                            ph.offsets, ph.reference, frame_px)
        self._start()
        self.frames = self.failed = self.sent = 0
        self.cpu_s = 0.0

    def _start(self) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(self.sky,))
        self._warm = self._pool.submit(_worker_pid)  # starts the worker now, not mid-night

    def worker_pid(self) -> int:
        return self._warm.result()

    def conditions(self, array, row: tuple) -> tuple[float, float]:
        """Seeing FWHM (arcsec) and sky (mag/arcsec²) behind the exposure's m5 (on the
        device host's thread: the world's ephemeris and weather are not shared)."""
        site, band, t0, t1 = row[2], row[4], float(row[8]), float(row[9])
        alt, moon_sep, t_mid = float(row[10]), float(row[12]), 0.5 * (t0 + t1)
        eph = array.world.sky.night.sites[site]
        depth = self.config.depth
        sky = depth.sky_dark_mag_arcsec2[band] + float(sky_delta_mag(
            depth, band, alt, float(eph.moon_alt(t_mid)), moon_sep,
            float(eph.moon_phase_angle(t_mid))))
        seeing = float(seeing_at(array.weather_at(site, t0)["seeing_arcsec"], alt))
        return seeing, sky

    def detect(self, array, queued) -> tuple[Detections, list[float]]:
        rows = [q[1] for q in queued]
        try:
            results = self._pool.submit(_frames_job, [(q[1], q[2]) for q in queued]).result()
        except BrokenProcessPool:  # the worker died (killed, out of memory): start another
            log.error("the frames worker died; %d exposures get no detections", len(rows))
            self._pool.shutdown(wait=False)
            self._start()
            results = [{**_empty(), "limit": float(r[14]), "note": "the frames worker died",
                        "cpu_s": 0.0} for r in rows]
        for row, res in zip(rows, results, strict=True):
            self.frames += 1
            self.cpu_s += res["cpu_s"]
            self.sent += res["ra"].size
            if res["note"] is not None:
                self.failed += 1
                log.warning("%s (%s, field %s): %s", row[0], row[1], row[5], res["note"])
            if self.frames % 20 == 0:
                log.info("frames: %d measured (%.1f s each), %d not measured, %d sources "
                         "sent, %d exposures waiting", self.frames, self.cpu_s / self.frames,
                         self.failed, self.sent, array.waiting)
        return _stack(results, rows, self.bands), [r["limit"] for r in results]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class FootprintPath:
    """The catalogue path with each exposure's detections cropped to the frame a frames
    rehearsal would render: the comparison for it (``--frame-footprint``)."""

    batch_max = None

    def __init__(self, array, frame_px: int = FRAME_PX):
        self.grid, self.frame_px = array.cache.grid, int(frame_px)

    def conditions(self, array, row):
        return None

    def detect(self, array, queued):
        rows = [q[1] for q in queued]
        det = array.catalogue(rows)
        if det is None:
            return None, None
        keep = np.zeros(det.exposure.size, bool)
        for k, row in enumerate(rows):
            sel = np.flatnonzero(det.exposure == k)
            wcs = frame_wcs(self.grid, int(row[5]), self.frame_px)
            keep[sel] = in_frame(wcs, self.frame_px, det.ra_deg[sel], det.dec_deg[sel])
        return Detections(*(None if v is None else v[keep] for v in
                            (det.exposure, det.ra_deg, det.dec_deg, det.mjd, det.band,
                             det.mag, det.mag_err, det.truth, det.ref_mag))), None

    def close(self) -> None:
        pass
