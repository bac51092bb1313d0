"""A bridge's own camera frames to SBP1 ``detections`` (``--photometry``; docs/photometry.md,
"Frames from a bridge").

A hardware bridge (``python -m drivers.indi`` or ``python -m drivers.alpaca``) that fetches
each exposure's frame hands it here with the exposure's identity; the frame is measured by
the photometry pipeline (``drivers/photometry``) in a worker *process* and comes back as a
``detections`` event, split into parts, exactly as the simulated photometry sends it.

* **Calibration stars** (``--reference CAT.csv``: ``ra_deg, dec_deg, mag`` in the bridge's
  band, the ``brain photometry --reference`` format): the stars within the frame's
  radius refine the header's WCS and give the zero point. Without them the header's
  MAGZP calibrates and the header's WCS is used as it is.
* **What is sent** is what is new or changed, as difference imaging would send it: a
  source matched (within 2") to a calibration star or to the field's own reference and
  not changed beyond 5 sigma is a steady star and is not sent.
* **The field's own reference** (``--frame-history DIR``): the first
  ``HISTORY_EPOCHS`` measured frames of each field and band are kept (``DIR/{band}/
  {field_id}.npz``) and merged into that field's reference (``build_reference``); then the
  reference is frozen, as a survey's template is: a transient that appears later is new
  against it; one that was there while the template was built is not (delete the file to
  rebuild it). One file a field and band: bounded by the survey's fields.
* ``ref_mag`` of each sent source: the magnitude of the calibration star or field
  reference source within 2", nil where a reference covers the place and holds
  nothing; absent where there is no reference at all.
* A frame that cannot be measured (no WCS, too few stars, saturated, ...) sends no
  event: its reason is logged and counted (``stats``). At most ``MAX_PENDING`` frames
  wait; a newer frame beyond that is dropped (counted) so that memory stays bounded when
  the pipeline falls behind the camera.

``sep`` holds the GIL while it works (0.1-0.3 s at a time on 2k-4k frames), so the frames
are measured in a ``spawn`` worker process, never on a thread of the bridge's protocol
loop.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.photometry import (
    BAD_FOR_CALIBRATION,
    Catalogue,
    PhotometryError,
    build_reference,
    find_changes,
    process_frame,
    read_reference,
)
from drivers.photometry.astrometry import header_wcs
from drivers.photometry.config import FLAG_MERGED

log = logging.getLogger("drivers.framephot")

SOURCES_PER_EVENT = 6000  # keeps a detections message well under the 1 MiB limit
SENT_BAD = BAD_FOR_CALIBRATION & ~FLAG_MERGED  # deblended rows are sound photometry
MATCH_ARCSEC = 2.0  # a detection is a reference source within this
CHANGE_SIGMA = 5.0  # ... unless it differs from it by more than this
STAR_ERR = 0.01  # magnitude error given to calibration stars (the CSV has none)
HISTORY_EPOCHS = 3  # frames of a field merged into its own reference, then frozen
FROZEN_KEPT = 256  # fields whose frozen reference the worker keeps in memory
MAX_PENDING = 4  # frames waiting for the worker; beyond this the newest is dropped
CONE_MARGIN = 1.2  # calibration stars within this times the frame's half-diagonal


@dataclass(frozen=True)
class FrameMeta:
    """The exposure a frame belongs to, as the ``detections`` event names it."""

    obs_id: str
    field_id: int
    band: str
    t_mid: float  # world Unix seconds, mid-exposure
    limiting_mag: float  # the nominal 5-sigma depth, sent when the frame gives none


class StarCatalogue:
    """Calibration stars, sorted by Dec for cone selection."""

    def __init__(self, ra, dec, mag):
        order = np.argsort(dec)
        self.ra, self.dec, self.mag = (np.asarray(a, float)[order] for a in (ra, dec, mag))

    @classmethod
    def read(cls, path) -> StarCatalogue:
        return cls(*read_reference(path))  # PhotometryError: one line

    def cone(self, ra0: float, dec0: float, radius_deg: float):
        lo, hi = np.searchsorted(self.dec, [dec0 - radius_deg, dec0 + radius_deg])
        ra, dec, mag = self.ra[lo:hi], self.dec[lo:hi], self.mag[lo:hi]
        c = (np.sin(np.radians(dec)) * math.sin(math.radians(dec0))
             + np.cos(np.radians(dec)) * math.cos(math.radians(dec0))
             * np.cos(np.radians(ra - ra0)))
        near = c >= math.cos(math.radians(radius_deg))
        return ra[near], dec[near], mag[near]


class FieldHistory:
    """Each field's own reference from its first measured frames (``HISTORY_EPOCHS``),
    kept in ``DIR/{band}/{field_id}.npz``."""

    def __init__(self, root, epochs: int = HISTORY_EPOCHS):
        self.root, self.epochs = Path(root), int(epochs)
        self._frozen: OrderedDict[tuple[str, int], Catalogue] = OrderedDict()

    def _path(self, band: str, field_id: int) -> Path:
        return self.root / band / f"{int(field_id)}.npz"

    def _load(self, band: str, field_id: int) -> list[Catalogue]:
        p = self._path(band, field_id)
        if not p.exists():
            return []
        try:
            with np.load(p) as z:
                e = z["epoch"]
                return [Catalogue(z["ra"][e == k], z["dec"][e == k], z["mag"][e == k],
                                  z["err"][e == k]) for k in range(int(e.max()) + 1)]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("field reference %s unreadable (%s); rebuilding it", p, exc)
            return []

    def use(self, band: str, field_id: int, cat: Catalogue) -> Catalogue | None:
        """The field's reference from its earlier frames (None: none yet); while it is not
        frozen, this frame's sources ``cat`` join it (written to its file). A frozen
        reference is kept in memory for the ``FROZEN_KEPT`` fields used last, so the file
        is read and merged once, not at every frame."""
        key = (band, int(field_id))
        ref = self._frozen.get(key)
        if ref is not None:
            self._frozen.move_to_end(key)
            return ref
        got = self._load(band, field_id)
        ref = build_reference(got, MATCH_ARCSEC) if got else None
        if len(got) >= self.epochs:
            self._frozen[key] = ref
            if len(self._frozen) > FROZEN_KEPT:
                self._frozen.popitem(last=False)
            return ref
        got.append(cat)
        p = self._path(band, field_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp.npz")
        np.savez(tmp, ra=np.concatenate([c.ra_deg for c in got]),
                 dec=np.concatenate([c.dec_deg for c in got]),
                 mag=np.concatenate([c.mag for c in got]),
                 err=np.concatenate([c.mag_err for c in got]),
                 epoch=np.repeat(np.arange(len(got)), [c.ra_deg.size for c in got]))
        os.replace(tmp, p)
        return ref


def reduce_frame(data: np.ndarray, header, meta: FrameMeta, stars: StarCatalogue | None,
                 history: FieldHistory | None) -> dict:
    """Measure one frame; the ``detections`` body (without parts) of what is new or
    changed. Raises :class:`PhotometryError` (one line) when it cannot be measured."""
    w0 = header_wcs(header)  # the cheap check first
    ny, nx = np.shape(data) if np.ndim(data) == 2 else (0, 0)
    reference = None
    if stars is not None:
        (ra0,), (dec0,) = w0.all_pix2world([0.5 * (nx - 1)], [0.5 * (ny - 1)], 0)
        scale = float(np.sqrt(abs(np.linalg.det(w0.pixel_scale_matrix))))
        radius = CONE_MARGIN * 0.5 * math.hypot(nx, ny) * scale
        reference = stars.cone(float(ra0), float(dec0), radius)
    res = process_frame(data, header, reference)
    ok = (res.flags & SENT_BAD) == 0
    cat = Catalogue(res.ra_deg[ok], res.dec_deg[ok], res.mag[ok], res.mag_err[ok])
    keep = np.ones(cat.ra_deg.size, bool)
    refs: list[Catalogue] = []
    if reference is not None:
        r_ra, r_dec, r_mag = reference
        refs.append(Catalogue(r_ra, r_dec, r_mag, np.full(r_mag.size, STAR_ERR)))
    if history is not None:
        own = history.use(meta.band, meta.field_id, cat)
        if own is not None:
            refs.append(own)
    ref_mag = np.full(cat.ra_deg.size, np.inf)  # inf: nothing there
    for ref in refs:
        ch = find_changes(cat, ref, MATCH_ARCSEC, k=CHANGE_SIGMA)
        hit = ch.ref_index >= 0
        steady = np.zeros(keep.size, bool)
        steady[hit] = True
        steady[ch.changed] = False
        keep &= ~steady
        fill = hit & ~np.isfinite(ref_mag)
        ref_mag[fill] = ref.mag[ch.ref_index[fill]]
    sel = np.flatnonzero(keep)
    limit = res.limiting_mag if math.isfinite(res.limiting_mag) else meta.limiting_mag
    sources = []
    for a, d, m, e, r in zip(cat.ra_deg[sel].tolist(), cat.dec_deg[sel].tolist(),
                             cat.mag[sel].tolist(), cat.mag_err[sel].tolist(),
                             ref_mag[sel].tolist(), strict=True):
        src = {"ra_deg": a, "dec_deg": d, "mag": m, "mag_err": e}
        if refs:
            src["ref_mag"] = r if math.isfinite(r) else None
        sources.append(src)
    return {"obs_id": meta.obs_id, "field_id": int(meta.field_id), "band": meta.band,
            "t_mid": float(meta.t_mid), "limiting_mag": float(limit), "sources": sources,
            "_summary": {**res.summary(), "sent": len(sources),
                         "steady": int(cat.ra_deg.size - sel.size)}}


def split_parts(body: dict) -> list[tuple[str, dict]]:
    """One exposure's ``detections`` body as events of at most ``SOURCES_PER_EVENT``
    sources, with ``part`` and ``parts``."""
    sources = body["sources"]
    base = {k: v for k, v in body.items() if k != "sources" and not k.startswith("_")}
    chunks = [sources[i:i + SOURCES_PER_EVENT]
              for i in range(0, max(len(sources), 1), SOURCES_PER_EVENT)]
    return [("detections", {**base, "sources": c, "part": j, "parts": len(chunks)})
            for j, c in enumerate(chunks)]


# The worker process ------------------------------------------------------------------
_STARS: StarCatalogue | None = None
_HISTORY: FieldHistory | None = None


def _start_worker(reference, history_dir) -> None:
    global _STARS, _HISTORY
    # The bridge stops first on Ctrl-C or SIGTERM; the pool then ends this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _STARS = StarCatalogue.read(reference) if reference is not None else None
    _HISTORY = FieldHistory(history_dir) if history_dir is not None else None


def _worker_ready() -> int:
    return os.getpid()


def _job(data, header, meta: FrameMeta) -> tuple[dict | None, str | None, float]:
    t = time.perf_counter()
    try:
        body = reduce_frame(data, header, meta, _STARS, _HISTORY)
        return body, None, time.perf_counter() - t
    except PhotometryError as exc:
        return None, str(exc), time.perf_counter() - t
    except Exception as exc:  # a frame the pipeline did not foresee
        # (a header astropy rejects, a file the history cannot write): that frame's
        # reason in one line, not a traceback that ends the bridge.
        return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t


class FrameReducer:
    """Frames in, ``detections`` events out, measured in one worker process.

    ``submit`` never blocks the caller; ``events`` returns the finished frames' events
    (in the order the frames finished). ``reference``: the calibration stars' CSV (read
    here first, so a bad file fails at start with one line); ``history_dir``: where the
    fields' own references are kept (None: none)."""

    def __init__(self, reference=None, history_dir=None, max_pending: int = MAX_PENDING):
        if reference is not None:
            StarCatalogue.read(reference)  # raises PhotometryError at start, not mid-night
        if history_dir is not None:
            Path(history_dir).mkdir(parents=True, exist_ok=True)
        self.reference, self.history_dir = reference, history_dir
        self.max_pending = int(max_pending)
        self._pending: deque[tuple[FrameMeta, Future]] = deque()
        self.stats = {"frames": 0, "failed": 0, "dropped": 0, "sent": 0, "cpu_s": 0.0}
        self.last_note: str | None = None
        self._start()

    def _start(self) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker,
                                         initargs=(self.reference, self.history_dir))
        self._warm = self._pool.submit(_worker_ready)  # start the worker now

    def worker_pid(self) -> int:
        return self._warm.result()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, meta: FrameMeta, data: np.ndarray, header) -> bool:
        """Queue a frame; False (and counted as dropped) when ``max_pending`` wait."""
        if len(self._pending) >= self.max_pending:
            self.stats["dropped"] += 1
            self.last_note = f"{meta.obs_id}: dropped, {len(self._pending)} frames waiting"
            log.warning("frame %s dropped: the pipeline is %d frames behind", meta.obs_id,
                        len(self._pending))
            return False
        try:
            fut = self._pool.submit(_job, data, header, meta)
        except BrokenProcessPool:  # the worker died between frames: a new one
            log.error("the photometry worker had died; starting another")
            self._restart()
            fut = self._pool.submit(_job, data, header, meta)
        self._pending.append((meta, fut))
        return True

    def _restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for m, _f in self._pending:
            log.error("frame %s lost with the photometry worker", m.obs_id)
            self.stats["failed"] += 1
        self._pending.clear()
        self._start()

    def events(self) -> list[tuple[str, dict]]:
        out: list[tuple[str, dict]] = []
        while self._pending and self._pending[0][1].done():
            meta, fut = self._pending.popleft()
            try:
                body, note, cpu = fut.result()
            except BrokenProcessPool:
                body, note, cpu = None, "the photometry worker died", 0.0
                self._restart()
            self.stats["frames"] += 1
            self.stats["cpu_s"] += cpu
            if body is None:
                self.stats["failed"] += 1
                self.last_note = f"{meta.obs_id}: {note}"
                log.warning("frame %s (field %d) not measured: %s", meta.obs_id,
                            meta.field_id, note)
                continue
            self.stats["sent"] += len(body["sources"])
            s = body["_summary"]
            log.info("frame %s: %d sources, %d steady, %d sent, zp %.3f (%d stars), "
                     "limit %.2f, %.2f s", meta.obs_id, s["sources"], s["steady"], s["sent"],
                     s["zero_point"], s["zero_point_stars"], body["limiting_mag"], cpu)
            out += split_parts(body)
        return out

    def drain(self, timeout_s: float) -> list[tuple[str, dict]]:
        """Wait up to ``timeout_s`` for the waiting frames, then return their events."""
        t_end = time.monotonic() + timeout_s
        while (time.monotonic() < t_end
               and not all(f.done() for _m, f in self._pending)):
            time.sleep(0.02)
        return self.events()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
