"""Association: detections -> objects with g/r/i light curves (the brain core's part).

Detections arrive in batches (the shells deliver them with the clock, about once a
minute of world time). A batch is matched against known objects by position within
``radius_arcsec``; unmatched detections that lie within the radius of each other (the
three bands of one visit, or repeats in the batch) become one new object.

Known objects live in two k-d trees: a large one rebuilt only when the small one
(objects created since) grows past a fraction of it, so the rebuild cost is amortised
and no Python loop ever runs over all objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

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

    def __len__(self) -> int:
        return len(self.ra_deg)

    @classmethod
    def concat(cls, batches: list[DetectionBatch]) -> DetectionBatch:
        has_truth = all(b.truth is not None for b in batches)
        return cls(*(np.concatenate([getattr(b, k) for b in batches])
                     for k in ("ra_deg", "dec_deg", "mjd", "band", "mag", "mag_err")),
                   np.concatenate([b.truth for b in batches]) if has_truth else None)


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

    @property
    def view(self) -> np.ndarray:
        return self.a[:self.n]


class Associator:
    """Objects, their positions and every detection assigned to them."""

    def __init__(self, radius_arcsec: float = 2.0, rebuild_fraction: float = 0.2):
        self.radius_chord = 2 * math.sin(math.radians(radius_arcsec / 3600) / 2)
        self.rebuild_fraction = rebuild_fraction
        self._xyz = np.empty((1024, 3))  # growable: no full copy per batch
        self.obj_ra = _Grow(np.float64)
        self.obj_dec = _Grow(np.float64)
        self.obj_truth = _Grow(np.int64)
        self._main: cKDTree | None = None
        self._n_main = 0
        self._recent: cKDTree | None = None
        # The light curves: one row per associated detection.
        self.det_obj = _Grow(np.int64)
        self.det_mjd = _Grow(np.float64)
        self.det_band = _Grow(np.int8)
        self.det_mag = _Grow(np.float32)
        self.det_err = _Grow(np.float32)
        self.det_truth = _Grow(np.int64)
        self.n_det_obj = _Grow(np.int32)

    @property
    def n_objects(self) -> int:
        return self.obj_ra.n

    @property
    def obj_xyz(self) -> np.ndarray:
        return self._xyz[:self.n_objects]

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
        """The known object within the association radius of each position, or -1."""
        ra, dec = np.atleast_1d(ra_deg).astype(float), np.atleast_1d(dec_deg).astype(float)
        if ra.size == 0:
            return np.empty(0, dtype=np.int64)
        return self._nearest(unit_vectors(ra, dec))

    def add(self, batch: DetectionBatch) -> np.ndarray:
        """Associate a batch; returns each detection's object id. Objects touched by the
        batch can be read from the return value."""
        if len(batch) == 0:
            return np.empty(0, dtype=np.int64)
        xyz = unit_vectors(batch.ra_deg, batch.dec_deg)
        obj = self._nearest(xyz)
        new = np.flatnonzero(obj < 0)
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
            first_id = self.n_objects
            obj[new] = first_id + inverse
            members = new[roots]
            self.obj_ra.extend(batch.ra_deg[members])
            self.obj_dec.extend(batch.dec_deg[members])
            self.obj_truth.extend(batch.truth[members] if batch.truth is not None
                                  else np.full(len(members), -1))
            self.n_det_obj.extend(np.zeros(len(members), dtype=np.int32))
            need = first_id + len(members)
            if need > len(self._xyz):
                bigger = np.empty((max(need, 2 * len(self._xyz)), 3))
                bigger[:first_id] = self._xyz[:first_id]
                self._xyz = bigger
            self._xyz[first_id:need] = xyz[members]
            self._reindex()
        self.det_obj.extend(obj)
        self.det_mjd.extend(batch.mjd)
        self.det_band.extend(batch.band)
        self.det_mag.extend(batch.mag)
        self.det_err.extend(batch.mag_err)
        self.det_truth.extend(batch.truth if batch.truth is not None
                              else np.full(len(batch), -1))
        np.add.at(self.n_det_obj.a, obj, 1)
        return obj

    def _reindex(self) -> None:
        n = self.n_objects
        if self._main is None or n - self._n_main > self.rebuild_fraction * max(self._n_main,
                                                                              5000):
            self._main = cKDTree(self.obj_xyz)
            self._n_main = n
            self._recent = None
        else:
            self._recent = cKDTree(self.obj_xyz[self._n_main:])

    def n_detections(self) -> np.ndarray:
        return self.n_det_obj.view

    def candidates(self, min_detections: int = 3) -> np.ndarray:
        """Object ids with at least ``min_detections`` detections."""
        return np.flatnonzero(self.n_det_obj.view >= min_detections)

    def light_curves(self, object_ids: np.ndarray):
        """Flat detection table of the given objects, sorted by object then time:
        (object, mjd, band, mag, mag_err)."""
        obj = self.det_obj.view
        sel = np.flatnonzero(np.isin(obj, object_ids))
        order = np.lexsort((self.det_mjd.view[sel], obj[sel]))
        sel = sel[order]
        return (obj[sel], self.det_mjd.view[sel], self.det_band.view[sel],
                self.det_mag.view[sel], self.det_err.view[sel])
