"""Association: detections -> objects with g/r/i light curves (the brain core's part).

Detections arrive in batches (the shells deliver them with the clock, about once a
minute of world time). A batch is matched against known objects by position within
``radius_arcsec``; unmatched detections that lie within the radius of each other (the
three bands of one visit, or repeats in the batch) become one new object.

Memory is bounded by the sky, not by the survey's age (docs/store.md):

* the **catalogue**: one compact row per known object (position, first and last seen,
  detections, nights, class probabilities, the per-band summary of its history). An
  object seen once is forgotten after ``orphan_days`` (most are artefacts); it stays in
  the store.
* the **active window**: the detections of the last ``memory_nights`` nights. Older
  detections live only in the object store (brain/core/store.py), which
  :meth:`Associator.history` reads for an object's whole light curve.

Rows of the catalogue (what the core indexes with) are in object-id order; an object's
id never changes, its row may at :meth:`close_night` (objects forgotten). Anything kept
across nights holds ids (:attr:`ids`, :meth:`rows_of`).

Known objects live in two k-d trees: a large one rebuilt only when the small one
(objects created since) grows past a fraction of it, so the rebuild cost is amortised
and no Python loop ever runs over all objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from brain.core.store import ObjectStore, empty_catalogue, quantize
from observatory.sky import unit_vectors


@dataclass
class DetectionBatch:
    """Detections in flat arrays (one row each). Times in MJD, magnitudes AB."""

    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mjd: np.ndarray
    band: np.ndarray  # 0, 1, 2 for g, r, i
    mag: np.ndarray
    mag_err: np.ndarray
    truth: np.ndarray | None = None  # simulator only: source index, -1 for bogus
    # What the survey's reference holds at each detection (+inf: nothing; NaN: not
    # reported), when the pipeline says (docs/protocol.md, ref_mag).
    ref_mag: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ra_deg)

    @classmethod
    def concat(cls, batches: list[DetectionBatch]) -> DetectionBatch:
        has_truth = all(b.truth is not None for b in batches)
        has_ref = any(b.ref_mag is not None for b in batches)
        return cls(*(np.concatenate([getattr(b, k) for b in batches])
                     for k in ("ra_deg", "dec_deg", "mjd", "band", "mag", "mag_err")),
                   np.concatenate([b.truth for b in batches]) if has_truth else None,
                   np.concatenate([b.ref_mag if b.ref_mag is not None
                                   else np.full(len(b), np.nan) for b in batches])
                   if has_ref else None)


class _Grow:
    """A growable 1-D numpy array."""

    def __init__(self, dtype, capacity: int = 1024):
        self.a = np.empty(capacity, dtype=dtype)
        self.n = 0

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=self.a.dtype)
        need = self.n + len(values)
        if need > len(self.a):
            bigger = np.empty(max(need, 2 * len(self.a)), dtype=self.a.dtype)
            bigger[:self.n] = self.a[:self.n]
            self.a = bigger
        self.a[self.n:need] = values
        self.n = need

    def keep(self, mask: np.ndarray) -> None:
        """Keep the rows where ``mask`` (over the first ``n``) is true, in a right-sized
        array (memory given back)."""
        kept = self.view[mask]
        self.a = np.empty(max(1024, 2 * kept.size), dtype=self.a.dtype)
        self.a[:kept.size] = kept
        self.n = kept.size

    @property
    def view(self) -> np.ndarray:
        return self.a[:self.n]


_DET = (("obj", np.int64), ("mjd", np.float64), ("band", np.int8), ("mag", np.float32),
        ("err", np.float32), ("truth", np.int64))


class Associator:
    """The catalogue of known objects and the detections of the active window."""

    def __init__(self, radius_arcsec: float = 2.0, rebuild_fraction: float = 0.2,
                 store: ObjectStore | None = None, memory_nights: int = 2,
                 orphan_days: float = 2.0, keep_orphans: bool = False):
        self.radius_chord = 2 * math.sin(math.radians(radius_arcsec / 3600) / 2)
        self.rebuild_fraction = rebuild_fraction
        self.store = store
        self.memory_nights = memory_nights
        self.orphan_days = orphan_days
        self.keep_orphans = keep_orphans  # their one detection stays in the store
        self.cat = empty_catalogue(1024)
        self.n_objects = 0
        self._xyz = np.empty((1024, 3))  # growable: no full copy per batch
        self._main: cKDTree | None = None
        self._n_main = 0
        self._recent: cKDTree | None = None
        self.next_id = store.next_object_id() if store is not None else 0
        # The active window: detections by object id (not row: rows move), in arrival order.
        self.det = {k: _Grow(t) for k, t in _DET}
        self._flushed = 0  # detections [0, _flushed) are in the store
        self._closed = 0  # detections [0, _closed) are in the catalogue's history
        self.window_mjd0 = math.inf  # every detection older than this is in the store
        self._dirty = np.zeros(1024, dtype=bool)  # catalogue rows changed since the flush
        self.sources_seen = np.zeros(0, dtype=bool)  # simulator truth: sources detected
        self._changed_cache: tuple | None = None
        self._version = 0  # changes with every batch and every close: caches key on it

    # Views ----------------------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self.cat["object_id"][:self.n_objects]

    @property
    def ra(self) -> np.ndarray:
        return self.cat["ra_deg"][:self.n_objects]

    @property
    def dec(self) -> np.ndarray:
        return self.cat["dec_deg"][:self.n_objects]

    @property
    def truth(self) -> np.ndarray:
        return self.cat["truth"][:self.n_objects]

    @property
    def prob(self) -> np.ndarray:
        return self.cat["prob"][:self.n_objects]

    @property
    def classified_ndet(self) -> np.ndarray:
        return self.cat["classified_ndet"][:self.n_objects]

    @property
    def first_mjd(self) -> np.ndarray:
        return self.cat["first_mjd"][:self.n_objects]

    @property
    def last_mjd(self) -> np.ndarray:
        return self.cat["last_mjd"][:self.n_objects]

    @property
    def n_nights(self) -> np.ndarray:
        return self.cat["n_nights"][:self.n_objects]

    @property
    def obj_xyz(self) -> np.ndarray:
        return self._xyz[:self.n_objects]

    @property
    def n_window(self) -> int:
        """Detections held in memory."""
        return self.det["obj"].n

    def n_detections(self) -> np.ndarray:
        return self.cat["n_det"][:self.n_objects]

    def rows_of(self, object_ids) -> np.ndarray:
        """Catalogue rows of object ids, -1 for ids not in memory."""
        ids = np.atleast_1d(np.asarray(object_ids, dtype=np.int64))
        r = np.searchsorted(self.ids, ids)
        ok = r < self.n_objects
        ok[ok] = self.ids[r[ok]] == ids[ok]
        return np.where(ok, r, -1)

    def mark_dirty(self, rows) -> None:
        self._dirty[rows] = True

    # Association ----------------------------------------------------------------------
    def _nearest(self, xyz: np.ndarray) -> np.ndarray:
        """Nearest known object within the radius for each point, or -1."""
        best = np.full(len(xyz), -1, dtype=np.int64)
        best_d = np.full(len(xyz), np.inf)
        for tree, offset in ((self._main, 0), (self._recent, self._n_main)):
            if tree is None or tree.n == 0:
                continue
            d, i = tree.query(xyz, distance_upper_bound=self.radius_chord)
            ok = np.isfinite(d) & (d < best_d)
            best[ok] = i[ok] + offset
            best_d[ok] = d[ok]
        return best

    def locate(self, ra_deg, dec_deg) -> np.ndarray:
        """The row of the known object within the association radius of each position,
        or -1."""
        ra, dec = np.atleast_1d(ra_deg).astype(float), np.atleast_1d(dec_deg).astype(float)
        if ra.size == 0:
            return np.empty(0, dtype=np.int64)
        return self._nearest(unit_vectors(ra, dec))

    def _grow(self, need: int) -> None:
        if need > len(self.cat):
            size = max(need, 2 * len(self.cat))
            bigger = empty_catalogue(size)
            bigger[:self.n_objects] = self.cat[:self.n_objects]
            self.cat = bigger
            xyz = np.empty((size, 3))
            xyz[:self.n_objects] = self._xyz[:self.n_objects]
            self._xyz = xyz
            dirty = np.zeros(size, dtype=bool)
            dirty[:self.n_objects] = self._dirty[:self.n_objects]
            self._dirty = dirty

    def add(self, batch: DetectionBatch) -> np.ndarray:
        """Associate a batch; returns each detection's catalogue row."""
        if len(batch) == 0:
            return np.empty(0, dtype=np.int64)
        self._version += 1
        xyz = unit_vectors(batch.ra_deg, batch.dec_deg)
        row = self._nearest(xyz)
        new = np.flatnonzero(row < 0)
        truth = (np.asarray(batch.truth, dtype=np.int64) if batch.truth is not None
                 else np.full(len(batch), -1, dtype=np.int64))
        if new.size:
            # Group unmatched detections lying within the radius of each other: each
            # takes the smallest index of its neighbourhood as its new object's seed.
            pairs = cKDTree(xyz[new]).query_pairs(self.radius_chord, output_type="ndarray")
            seed = np.arange(new.size)
            if len(pairs):
                for _ in range(3):  # a few rounds settle chains of two or three links
                    np.minimum.at(seed, pairs[:, 1], seed[pairs[:, 0]])
                    np.minimum.at(seed, pairs[:, 0], seed[pairs[:, 1]])
            roots, inverse = np.unique(seed, return_inverse=True)
            first = self.n_objects
            row[new] = first + inverse
            members = new[roots]
            need = first + len(members)
            self._grow(need)
            self.cat[first:need] = empty_catalogue(len(members))  # rows may hold old data
            c = self.cat[first:need]
            c["object_id"] = self.next_id + np.arange(len(members))
            c["ra_deg"], c["dec_deg"] = batch.ra_deg[members], batch.dec_deg[members]
            c["first_mjd"], c["last_mjd"] = np.inf, -np.inf
            c["truth"] = truth[members]
            self._xyz[first:need] = xyz[members]
            self.next_id += len(members)
            self.n_objects = need
            self._reindex()
        # At the store's precision from the start: memory and store hold the same numbers.
        mjd, mag, err = quantize(batch.mjd, batch.mag, batch.mag_err)
        self._update_catalogue(row, mjd)
        band = np.asarray(batch.band).astype(np.int64)
        if batch.ref_mag is not None:
            ref = np.asarray(batch.ref_mag, dtype=np.float32)
            said = ~np.isnan(ref)
            self.cat["ref"][row[said], band[said]] = ref[said]
        self.reference_departure(row, band, mag, err)
        d = self.det
        d["obj"].extend(self.cat["object_id"][row])
        d["mjd"].extend(mjd)
        d["band"].extend(batch.band)
        d["mag"].extend(mag)
        d["err"].extend(err)
        d["truth"].extend(truth)
        real = truth[truth >= 0]
        if real.size:
            if real.max() >= self.sources_seen.size:
                grown = np.zeros(max(int(real.max()) + 1, 2 * self.sources_seen.size), bool)
                grown[:self.sources_seen.size] = self.sources_seen
                self.sources_seen = grown
            self.sources_seen[real] = True
        self.window_mjd0 = min(self.window_mjd0, float(np.min(mjd)))
        return row

    def reference_departure(self, row: np.ndarray, band: np.ndarray, mag: np.ndarray,
                            err: np.ndarray) -> None:
        """Fold detections into ``ref_dev``, how far an object's detections have strayed
        from the survey reference's source at its place: the largest |mag - ref| minus
        three errors, +inf for a detection where the reference has nothing; a band whose
        reference is unknown compares nothing (the candidate rule, ``candidate_ids``)."""
        ref = self.cat["ref"][row, band].astype(np.float64)
        known = ~np.isnan(ref)
        if not known.any():
            return
        r, ref = row[known], ref[known]
        with np.errstate(invalid="ignore"):
            dev = np.where(np.isinf(ref), np.inf, np.abs(mag[known] - ref) - 3 * err[known])
        cur = self.cat["ref_dev"]
        first = np.isnan(cur[r])
        cur[r[first]] = -np.inf
        np.maximum.at(cur, r, dev.astype(np.float32))

    def _update_catalogue(self, row: np.ndarray, mjd: np.ndarray) -> None:
        u, inv = np.unique(row, return_inverse=True)
        lo = np.full(u.size, np.inf)
        np.minimum.at(lo, inv, mjd)
        hi = np.full(u.size, -np.inf)
        np.maximum.at(hi, inv, mjd)
        c = self.cat
        # A new night for the object: more than half a day since it was last seen.
        c["n_nights"][u] += (lo > c["last_mjd"][u] + 0.5).astype(np.int32)
        c["first_mjd"][u] = np.minimum(c["first_mjd"][u], lo)
        c["last_mjd"][u] = np.maximum(c["last_mjd"][u], hi)
        c["n_det"][u] += np.bincount(inv, minlength=u.size).astype(np.int32)
        self._dirty[u] = True

    def _reindex(self) -> None:
        n = self.n_objects
        if self._main is None or n - self._n_main > self.rebuild_fraction * max(self._n_main,
                                                                              5000):
            self._main = cKDTree(self.obj_xyz)
            self._n_main = n
            self._recent = None
        else:
            self._recent = cKDTree(self.obj_xyz[self._n_main:])

    # Light curves ---------------------------------------------------------------------
    def _window_rows(self, rows: np.ndarray, start: int = 0):
        """Detections of the window (from index ``start``) of the given catalogue rows:
        (row, mjd, band, mag, err, truth), sorted by row then time."""
        d = self.det
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        obj = d["obj"].view[start:]
        want = self.ids[rows]
        sel = np.flatnonzero(np.isin(obj, want)) + start
        r = np.searchsorted(self.ids, d["obj"].view[sel])
        order = np.lexsort((d["mjd"].view[sel], r))
        sel = sel[order]
        return (r[order], d["mjd"].view[sel], d["band"].view[sel], d["mag"].view[sel],
                d["err"].view[sel], d["truth"].view[sel])

    def light_curves(self, rows):
        """The active window's detections of catalogue ``rows``, sorted by row then time:
        (row, mjd, band, mag, mag_err)."""
        return self._window_rows(rows)[:5]

    def history(self, rows):
        """Whole light curves of catalogue ``rows``: the store's older detections and the
        window's, sorted by row then time: (row, mjd, band, mag, mag_err)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        recent = self._window_rows(rows)[:5]
        if self.store is None or rows.size == 0:
            return recent
        obj, *old = self.store.light_curves(self.ids[rows], before_mjd=self.window_mjd0)
        if obj.size == 0:
            return recent
        parts = [np.searchsorted(self.ids, obj), *old]
        merged = [np.concatenate([a, b]) for a, b in zip(parts, recent, strict=True)]
        order = np.lexsort((merged[1], merged[0]))
        return tuple(m[order] for m in merged)

    def history_by_id(self, object_ids):
        """Whole light curves by object id (objects forgotten from memory included, from
        the store): (object id, mjd, band, mag, mag_err), sorted by id then time."""
        ids = np.unique(np.asarray(object_ids, dtype=np.int64))
        rows = self.rows_of(ids)
        obj, *rest = self.history(rows[rows >= 0])
        out = (self.ids[obj], *rest)
        gone = ids[rows < 0]
        if self.store is not None and gone.size:
            old = self.store.light_curves(gone)
            out = tuple(np.concatenate([a, b]) for a, b in zip(out, old, strict=True))
            order = np.lexsort((out[1], out[0]))
            out = tuple(a[order] for a in out)
        return out

    def prob_by_id(self, object_id: int) -> np.ndarray | None:
        r = int(self.rows_of([object_id])[0])
        return None if r < 0 else self.prob[r]

    # The known sky --------------------------------------------------------------------
    def changed(self, change_mag: float) -> np.ndarray:
        """Rows whose detections since the last night closed lie outside their history:
        brighter than its brightest or fainter than its faintest by ``change_mag`` plus
        three errors, in a band with three or more detections on earlier nights."""
        d = self.det
        s = self._closed
        key = (self._version, change_mag)
        if self._changed_cache is not None and self._changed_cache[0] == key:
            return self._changed_cache[1]
        out = np.zeros(self.n_objects, dtype=bool)
        self._changed_cache = (key, out)
        if d["obj"].n == s:
            return out
        r = self.rows_of(d["obj"].view[s:])
        ok = r >= 0
        r, band = r[ok], d["band"].view[s:][ok].astype(np.int64)
        mag, err = d["mag"].view[s:][ok], d["err"].view[s:][ok]
        h = self.cat["hist"][r, band]
        margin = change_mag + 3 * err
        beyond = (h[:, 0] >= 3) & ((mag < h[:, 3] - margin) | (mag > h[:, 4] + margin))
        out[r[beyond]] = True
        return out

    # Closing a night ------------------------------------------------------------------
    def flush(self) -> int:
        """Write the detections and catalogue rows not yet in the store; returns how many
        detections were written. A no-op without a store."""
        if self.store is None:
            return 0
        d, s = self.det, self._flushed
        n = d["obj"].n - s
        if n:
            self.store.write_detections(d["obj"].view[s:], d["mjd"].view[s:],
                                        d["band"].view[s:], d["mag"].view[s:],
                                        d["err"].view[s:])
        self._flushed = d["obj"].n
        dirty = np.flatnonzero(self._dirty[:self.n_objects])
        self.store.write_objects(self.cat[dirty])
        self._dirty[:] = False
        self.store.commit()
        return n

    def close_night(self, now_mjd: float) -> dict:
        """The night is over: fold its detections into each object's history, write them
        to the store, forget objects seen once ``orphan_days`` ago and the detections
        older than the window. Returns what was done (counts)."""
        self._version += 1
        d, s = self.det, self._closed
        r = self.rows_of(d["obj"].view[s:])
        ok = r >= 0
        r, band = r[ok], d["band"].view[s:][ok].astype(np.int64)
        mag = d["mag"].view[s:][ok].astype(np.float64)
        h = self.cat["hist"]
        np.add.at(h, (r, band, 0), 1.0)
        np.add.at(h, (r, band, 1), mag)
        np.add.at(h, (r, band, 2), mag * mag)
        np.minimum.at(h, (r, band, 3), mag)
        np.maximum.at(h, (r, band, 4), mag)
        self._dirty[np.unique(r)] = True
        self._closed = d["obj"].n
        written = d["obj"].n - self._flushed
        night = slice(s, self._closed)
        since = float(d["mjd"].view[night].min()) if self._closed > s else np.inf
        if (self.store is not None and self._closed > s
                and since > d["mjd"].view[:s].max(initial=-np.inf)):
            # The night's flushes become one row per object: fewer, larger rows that
            # compress better (docs/store.md). Every detection of the night is still in
            # memory here, and the store's rows of the night are those that start at or
            # after its first (none of an earlier night does: checked just above).
            self.store.rewrite_night(since, d["obj"].view[night],
                                     d["mjd"].view[night], d["band"].view[night],
                                     d["mag"].view[night], d["err"].view[night])
            self._flushed = self._closed
        if self.store is not None:
            self.store.set_meta("closed_mjd", repr(float(now_mjd)))
            self.store.set_meta("next_object_id", str(int(self.next_id)))
        self.flush()
        # Forget objects seen once, long enough ago (their detection is deleted from the
        # store too unless ``keep_orphans``).
        n = self.n_objects
        forget = ((self.cat["n_det"][:n] <= 1)
                  & (self.cat["last_mjd"][:n] < now_mjd - self.orphan_days))
        if self.store is None:
            forget[:] = False  # nowhere to keep them: an associator without a store
        kept = int(n - forget.sum())
        if forget.any():
            self.store.forget_objects(self.ids[forget], detections=not self.keep_orphans)
            self.store.commit()
            keep = ~forget
            self.cat[:kept] = self.cat[:n][keep]
            self._xyz[:kept] = self._xyz[:n][keep]
            self._dirty[:kept] = self._dirty[:n][keep]
            self.n_objects = kept
            self._main = None
            self._reindex()
        # The window: from the start of the oldest of the last ``memory_nights - 1``
        # closed nights (this one included), so a night is whole in memory or not there
        # at all (a night of three sites lasts 14 hours and more: no fixed offset from
        # dawn falls between nights). The next night adds to it until it is closed.
        cutoff, dropped = now_mjd, 0
        if self.store is not None:
            starts = _floats(self.store.get_meta("night_starts"))
            if self._closed > s:
                starts.append(since)
            starts = starts[len(starts) - (self.memory_nights - 1):] if (
                self.memory_nights > 1) else []
            cutoff = starts[0] if starts else now_mjd
            self.store.set_meta("night_starts", ",".join(repr(x) for x in starts))
            self.store.set_meta("window_mjd", repr(float(cutoff)))
            keep = (d["mjd"].view >= cutoff) & np.isin(d["obj"].view, self.ids)
            dropped = int(keep.size - keep.sum())
            if dropped:
                for g in d.values():
                    g.keep(keep)
                self._flushed = self._closed = d["obj"].n
                self.window_mjd0 = (float(d["mjd"].view.min()) if d["obj"].n
                                    else max(cutoff, now_mjd))
            # The nights before the window are final: their rows become one row per
            # object and 4-day span (docs/store.md).
            self.store.compact_spans(float(self.store.get_meta("compacted_mjd") or -np.inf),
                                     cutoff)
            self.store.set_meta("compacted_mjd", repr(float(cutoff)))
            self.store.checkpoint()
        return {"written": written, "forgotten": int(n - kept),
                "dropped_from_memory": dropped, "objects": self.n_objects,
                "window": d["obj"].n}

    # A restart --------------------------------------------------------------------------
    def load(self, min_detections: int, now_mjd: float) -> dict:
        """Fill the catalogue and the window from the store (a restart): the objects a
        running brain would hold and the detections of the window. Reads nothing else."""
        if self.store is None:
            return {"objects": 0, "detections": 0}
        self._version += 1
        # Objects seen once, long ago, are forgotten as a running brain would have.
        self.store.forget_orphans(now_mjd - self.orphan_days, not self.keep_orphans)
        cat = self.store.known(min(2, min_detections), now_mjd - self.orphan_days)
        self._grow(cat.size)
        self.cat[:cat.size] = cat
        self.n_objects = cat.size
        self._xyz[:cat.size] = unit_vectors(cat["ra_deg"], cat["dec_deg"])
        self._dirty[:] = False
        self._main = None
        self._reindex()
        window = self.store.get_meta("window_mjd")  # as the last close left it
        cutoff = (float(window) if window is not None
                  else now_mjd - (self.memory_nights - 1) - 0.5)  # stores of before
        obj, mjd, band, mag, err = self.store.detections_since(cutoff)
        order = np.argsort(mjd, kind="stable")  # arrival order
        obj, mjd, band, mag, err = obj[order], mjd[order], band[order], mag[order], err[order]
        d = self.det
        for k, v in (("obj", obj), ("mjd", mjd), ("band", band), ("mag", mag), ("err", err),
                     ("truth", np.full(obj.size, -1))):
            d[k] = _Grow(dict(_DET)[k], max(1024, 2 * obj.size))
            d[k].extend(v)
        if obj.size:  # the truth of the window's detections: their object's
            r = self.rows_of(obj)
            d["truth"].view[r >= 0] = self.cat["truth"][r[r >= 0]]
            # ref_dev is not stored: again from the window, against each object's latest
            # reference (the departures of detections before the window are not needed:
            # only objects first seen within it can be new).
            ok = r >= 0
            self.reference_departure(r[ok], band[ok].astype(np.int64), mag[ok], err[ok])
        self._flushed = obj.size
        # The histories on disk are those of the last close_night: later detections are
        # the night not closed yet.
        closed = self.store.get_meta("closed_mjd")
        self._closed = (int(np.searchsorted(mjd, float(closed))) if closed is not None
                        else 0)
        self.window_mjd0 = float(mjd.min()) if obj.size else cutoff
        return {"objects": int(cat.size), "detections": int(obj.size)}


def _floats(text: str | None) -> list[float]:
    return [float(x) for x in text.split(",") if x] if text else []
