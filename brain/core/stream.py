"""What the follow-up hears: the candidates' snapshots (``take_snapshot``, from the
association's photometry and catalogue) and the sites' minutes, and the stream that
records them night by night for replay (brain/evaluation/followup_replay.py)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES
from observatory.times import unix_to_mjd

BAND_R = 1


# Probabilities in steps of 1/255: what the stream stores (one byte each) and so what
# the manager decides on, in the run and in its replay alike.
PROB_STEPS = 255


def prob_code(prob) -> np.ndarray:
    """Probabilities as the stream stores them: uint8, in steps of 1/255."""
    p = np.nan_to_num(np.asarray(prob, dtype=np.float32), nan=0.0)
    return np.round(np.clip(p, 0, 1) * PROB_STEPS).astype(np.uint8)


def quantize_prob(prob) -> np.ndarray:
    """Probabilities in steps of 1/255, as float16 (decoding :func:`prob_code`; already
    quantized values come back unchanged)."""
    return (prob_code(prob).astype(np.float32) / PROB_STEPS).astype(np.float16)


@dataclass
class Snapshot:
    """The candidates known at ``t`` (unix s) after a classification (one row each)."""

    t: float
    object_id: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mag: np.ndarray
    slope_mag_per_day: np.ndarray
    first_mjd: np.ndarray
    n_det: np.ndarray
    n_nights: np.ndarray
    prob: np.ndarray
    # The brightest magnitude seen in the band of ``mag`` (the whole history) and the
    # error of ``mag`` minus it: the brain's own evidence that the peak has passed.
    # Streams recorded before these existed read back as "never faded" (peak = latest).
    peak_mag: np.ndarray | None = None
    fade_err: np.ndarray | None = None

    FIELDS = ("object_id", "ra_deg", "dec_deg", "mag", "slope_mag_per_day", "first_mjd",
              "n_det", "n_nights", "prob", "peak_mag", "fade_err")

    def __post_init__(self):
        self.prob = quantize_prob(self.prob)
        if self.peak_mag is None:
            self.peak_mag = np.asarray(self.mag, dtype=np.float32).copy()
        if self.fade_err is None:
            self.fade_err = np.zeros(len(self.object_id), dtype=np.float32)

    @classmethod
    def empty(cls, t: float) -> Snapshot:
        z = np.zeros(0)
        return cls(t, z.astype(np.int64), z, z, z.astype(np.float32), z.astype(np.float32), z,
                   z.astype(np.int32), z.astype(np.int16), np.zeros((0, len(CLASSES)),
                                                                    dtype=np.float16),
                   z.astype(np.float32), z.astype(np.float32))

    @property
    def n(self) -> int:
        return len(self.object_id)


def take_snapshot(t: float, associator, cand: np.ndarray, recent_days: float,
                  max_mag: float) -> Snapshot:
    """Of the candidates ``cand`` (catalogue rows, :func:`candidate_ids`), those with a
    detection in the last ``recent_days`` and a latest magnitude brighter than
    ``max_mag``, with their recent photometry (the active window) and their whole
    history's first time, detections and nights (the catalogue). Ids, not rows."""
    if cand.size == 0:
        return Snapshot.empty(t)
    cand = np.asarray(cand, dtype=np.int64)
    obj, mjd, band, mag, err = associator.light_curves(cand)
    local = np.searchsorted(cand, obj)
    n = cand.size
    last = associator.last_mjd[cand].astype(float)
    now_mjd = float(unix_to_mjd(t))
    # Latest magnitude: the last r detection, else the last detection of any band.
    order = np.arange(len(obj))
    last_any = np.full(n, -1)
    np.maximum.at(last_any, local, order)
    is_r = band == BAND_R
    last_r = np.full(n, -1)
    np.maximum.at(last_r, local[is_r], order[is_r])
    pick = np.where(last_r >= 0, last_r, last_any)
    latest = np.where(pick >= 0, mag[np.maximum(pick, 0)].astype(float) if len(obj)
                      else np.nan, np.nan)
    peak, fade_err = _peak(associator, cand, local, band, mag, err, pick, latest)
    # Trend over the last day of r (or any band) detections: least-squares slope.
    win_last = np.full(n, -np.inf)
    np.maximum.at(win_last, local, mjd)
    recent = mjd > win_last[local] - 1.0
    use = recent & np.where(last_r[local] >= 0, is_r, True)
    k, x, y = local[use], mjd[use], mag[use].astype(float)
    cnt = np.bincount(k, minlength=n).astype(float)
    mx = np.bincount(k, x, minlength=n) / np.maximum(cnt, 1)
    my = np.bincount(k, y, minlength=n) / np.maximum(cnt, 1)
    dx = x - mx[k]
    sxx = np.bincount(k, dx * dx, minlength=n)
    sxy = np.bincount(k, dx * (y - my[k]), minlength=n)
    slope = np.where(sxx > (0.02 ** 2) * np.maximum(cnt, 1), sxy / np.maximum(sxx, 1e-12), 0.0)
    with np.errstate(invalid="ignore"):
        keep = (last >= now_mjd - recent_days) & (latest <= max_mag)
    rows = cand[keep]
    # Compact types (the stream of a season is written to disk): float32 photometry,
    # probabilities in steps of 1/255, trends and errors to float16 precision; the
    # manager decides on exactly what a replay reads back.
    return Snapshot(t, associator.ids[rows].astype(np.int64), associator.ra[rows].copy(),
                    associator.dec[rows].copy(), latest[keep].astype(np.float32),
                    _half(np.clip(slope[keep], -5, 5)),
                    associator.first_mjd[rows].astype(float),
                    associator.n_detections()[rows].astype(np.int32),
                    np.minimum(associator.n_nights[rows], 32767).astype(np.int16),
                    associator.prob[rows].astype(np.float16),
                    peak[keep].astype(np.float32), _half(fade_err[keep]))


def _half(x) -> np.ndarray:
    """float32 holding float16's precision (1 part in 2,000): a trend or an error needs
    no more, and the stream compresses it to about half."""
    return np.asarray(x).astype(np.float16).astype(np.float32)


def _peak(associator, cand, local, band, mag, err, pick, latest):
    """The brightest magnitude in the band of the latest one, over the active window's
    detections and the catalogue's history of closed nights, and the error of the fade
    (latest minus brightest): both magnitudes' errors in quadrature (the history keeps
    no errors: a peak from it counts with the latest's error)."""
    n = cand.size
    if local.size == 0:
        return latest.copy(), np.zeros(n)
    p = np.maximum(pick, 0)
    lband = np.where(pick >= 0, band[p], BAND_R).astype(np.int64)
    lerr = np.where(pick >= 0, err[p].astype(float), 0.0)
    same = band == lband[local]
    wpeak = np.full(n, np.inf)
    np.minimum.at(wpeak, local[same], mag[same].astype(float))
    # The error of the window's brightest detection (ties: any of them).
    at_peak = same & (mag.astype(float) == wpeak[local])
    perr = lerr.copy()
    perr[local[at_peak]] = err[at_peak].astype(float)
    hpeak = associator.cat["hist"][cand, lband, 3].astype(float)
    from_hist = hpeak < wpeak
    peak = np.where(from_hist, hpeak, wpeak)
    perr = np.where(from_hist, lerr, perr)
    peak = np.where(np.isfinite(peak), peak, latest)
    return np.minimum(peak, latest), np.hypot(lerr, perr)


@dataclass
class Stream:
    """What the follow-up manager heard during a run: every snapshot and, every minute,
    the date and which sites were open. Enough to re-run the manager alone."""

    snapshots: list[Snapshot] = field(default_factory=list)
    ticks: list[tuple[float, str, tuple[bool, ...]]] = field(default_factory=list)
    spilled_open_minutes: int = 0  # site-minutes open in the ticks already written out

    def open_hours(self) -> float:
        """Site-hours open over the whole stream, written out or not."""
        return (self.spilled_open_minutes + sum(sum(o) for _t, _d, o in self.ticks)) / 60.0

    def _arrays(self) -> dict[str, np.ndarray]:
        """Ticks, and snapshots as changes: each snapshot stores the ids of the rows that
        are new or differ from the previous snapshot's row of the same object, the ids
        that left, and per field a bit per stored row (``snap_{f}_changed``, packed) and
        the values of the rows whose field changed (a position is stored once, when its
        object first appears). Snapshots are in object-id order, so :meth:`load`
        rebuilds them exactly. Probabilities are stored as uint8 (:func:`prob_code`)."""
        arrays = {"tick_t": np.array([x[0] for x in self.ticks], dtype=np.float64),
                  "tick_date": np.array([x[1] for x in self.ticks], dtype="<U10"),
                  "tick_open": np.array([x[2] for x in self.ticks], dtype=bool),
                  "snap_t": np.array([s.t for s in self.snapshots], dtype=np.float64)}
        fields = Snapshot.FIELDS[1:]
        kept, removed = [], []
        changed = {f: [] for f in fields}
        prev = None
        for snap in self.snapshots:
            keep = np.ones(snap.n, dtype=bool)
            gone = np.zeros(0, dtype=np.int64)
            diff = {f: np.ones(snap.n, dtype=bool) for f in fields}
            if prev is not None and prev.n:
                idx = np.minimum(np.searchsorted(prev.object_id, snap.object_id), prev.n - 1)
                known = prev.object_id[idx] == snap.object_id
                for f in fields:
                    eq = getattr(snap, f) == getattr(prev, f)[idx]
                    diff[f] = ~(known & (eq.all(axis=1) if eq.ndim == 2 else eq))
                keep = np.logical_or.reduce([diff[f] for f in fields])
                gone = prev.object_id[~np.isin(prev.object_id, snap.object_id)]
            kept.append(keep)
            removed.append(gone)
            for f in fields:
                changed[f].append(diff[f][keep])
            prev = snap
        arrays["snap_n"] = np.array([k.sum() for k in kept], dtype=np.int64)
        arrays["snap_removed_n"] = np.array([g.size for g in removed], dtype=np.int64)
        arrays["snap_removed"] = (np.concatenate(removed) if removed
                                  else np.zeros(0, dtype=np.int64))
        empty = Snapshot.empty(0.0)
        for f in Snapshot.FIELDS:
            parts = []
            for k, (snap, keep) in enumerate(zip(self.snapshots, kept, strict=True)):
                v = getattr(snap, f)[keep]
                parts.append(v if f == "object_id" else v[changed[f][k]])
            col = np.concatenate(parts) if parts else getattr(empty, f)
            arrays[f"snap_{f}"] = prob_code(col) if f == "prob" else col
            if f != "object_id":
                bits = (np.concatenate(changed[f]) if changed[f]
                        else np.zeros(0, dtype=bool))
                arrays[f"snap_{f}_changed"] = np.packbits(bits)
        return arrays

    def spill(self, path) -> None:
        """Append what was heard since the last spill to ``path`` (a zip of .npy
        members, as ``np.savez_compressed`` writes, one part per spill) and forget it:
        a season's stream is written night by night, not held in memory."""
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z:
            k = sum(1 for n in z.namelist() if n.endswith("tick_t.npy"))
            for name, arr in self._arrays().items():
                with z.open(f"p{k:04d}_{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(arr),
                                              allow_pickle=False)
        self.spilled_open_minutes += sum(sum(o) for _t, _d, o in self.ticks)
        self.snapshots.clear()
        self.ticks.clear()

    def save(self, path) -> None:
        Path(path).unlink(missing_ok=True)
        self.spill(path)

    @classmethod
    def load(cls, path) -> Stream:
        out = cls()
        with np.load(path) as z:
            names = set(z.files)
            prefixes = sorted({n[:6] for n in names if n.startswith("p") and n[5] == "_"})
            for pre in prefixes or [""]:
                out.ticks += [(float(t), str(d), tuple(bool(x) for x in o)) for t, d, o in
                              zip(z[f"{pre}tick_t"], z[f"{pre}tick_date"],
                                  z[f"{pre}tick_open"], strict=True)]
                out.snapshots += _load_part(z, pre, names)
        return out


def _load_part(z, pre: str, names: set) -> list[Snapshot]:
    """The snapshots of one spill. Three layouts: whole snapshots (the oldest streams),
    changed rows, and changed fields of changed rows (:meth:`Stream._arrays`)."""
    # Older streams lack the later fields: they read back as their defaults.
    cols = {f: z[f"{pre}snap_{f}"] for f in Snapshot.FIELDS if f"{pre}snap_{f}" in names}
    if cols["prob"].dtype == np.uint8:
        cols["prob"] = quantize_prob(cols["prob"].astype(np.float32) / PROB_STEPS)
    total = int(z[f"{pre}snap_n"].sum())
    masks = {f: np.unpackbits(z[f"{pre}snap_{f}_changed"], count=total).astype(bool)
             for f in Snapshot.FIELDS[1:] if f"{pre}snap_{f}_changed" in names}
    at = {f: np.concatenate([[0], np.cumsum(m)]) for f, m in masks.items()}
    bounds = np.concatenate([[0], np.cumsum(z[f"{pre}snap_n"])])
    delta = f"{pre}snap_removed_n" in names
    if delta:
        gone_at = np.concatenate([[0], np.cumsum(z[f"{pre}snap_removed_n"])])
        gone_ids = z[f"{pre}snap_removed"]
    snaps, prev = [], None
    for k, t in enumerate(z[f"{pre}snap_t"]):
        a, b = bounds[k], bounds[k + 1]
        ids = cols["object_id"][a:b]
        rows = {"object_id": ids}
        if prev is not None and prev.n:
            idx = np.minimum(np.searchsorted(prev.object_id, ids), prev.n - 1)
        for f, c in cols.items():
            if f == "object_id":
                continue
            if f not in masks:
                rows[f] = c[a:b]
                continue
            m = masks[f][a:b]
            v = (getattr(prev, f)[idx].copy() if prev is not None and prev.n
                 else np.zeros((b - a, *c.shape[1:]), dtype=c.dtype))
            v[m] = c[at[f][a]:at[f][b]]
            rows[f] = v
        rows = _defaults(rows)
        if delta and prev is not None:
            gone = gone_ids[gone_at[k]:gone_at[k + 1]]
            stay = ~np.isin(prev.object_id, np.r_[gone, ids])
            merged = {f: np.concatenate([getattr(prev, f)[stay], rows[f]])
                      for f in Snapshot.FIELDS}
            order = np.argsort(merged["object_id"], kind="stable")
            rows = {f: v[order] for f, v in merged.items()}
        prev = Snapshot(float(t), *(rows[f] for f in Snapshot.FIELDS))
        snaps.append(prev)
    return snaps


def _defaults(rows: dict) -> dict:
    """A snapshot's columns with the fields older streams lack filled in: never faded
    (the peak is the latest magnitude)."""
    if "peak_mag" not in rows:
        rows["peak_mag"] = np.asarray(rows["mag"], dtype=np.float32).copy()
    if "fade_err" not in rows:
        rows["fade_err"] = np.zeros(len(rows["object_id"]), dtype=np.float32)
    return rows
