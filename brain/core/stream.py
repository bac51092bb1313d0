"""What the follow-up hears: the candidates' snapshots and the sites' minutes, and the
stream that records them for replay (brain/evaluation/followup_replay.py)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES


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

    FIELDS = ("object_id", "ra_deg", "dec_deg", "mag", "slope_mag_per_day", "first_mjd",
              "n_det", "n_nights", "prob")

    @classmethod
    def empty(cls, t: float) -> Snapshot:
        z = np.zeros(0)
        return cls(t, z.astype(np.int64), z, z, z.astype(np.float32), z.astype(np.float32), z,
                   z.astype(np.int32), z.astype(np.int16), np.zeros((0, len(CLASSES)),
                                                                    dtype=np.float16))

    @property
    def n(self) -> int:
        return len(self.object_id)


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
        """Ticks, and snapshots as changes: each snapshot stores the rows that are new or
        differ from the previous snapshot's row of the same object, and the ids that
        left (snapshots are in object-id order, so :meth:`load` rebuilds them exactly)."""
        arrays = {"tick_t": np.array([x[0] for x in self.ticks], dtype=np.float64),
                  "tick_date": np.array([x[1] for x in self.ticks], dtype="<U10"),
                  "tick_open": np.array([x[2] for x in self.ticks], dtype=bool),
                  "snap_t": np.array([s.t for s in self.snapshots], dtype=np.float64)}
        kept, removed, n_kept, n_removed = [], [], [], []
        prev = None
        for snap in self.snapshots:
            keep = np.ones(snap.n, dtype=bool)
            gone = np.zeros(0, dtype=np.int64)
            if prev is not None and prev.n:
                idx = np.minimum(np.searchsorted(prev.object_id, snap.object_id), prev.n - 1)
                same = prev.object_id[idx] == snap.object_id
                for f in Snapshot.FIELDS[1:]:
                    new, old = getattr(snap, f), getattr(prev, f)[idx]
                    eq = new == old
                    same &= eq.all(axis=1) if eq.ndim == 2 else eq
                keep = ~same
                gone = prev.object_id[~np.isin(prev.object_id, snap.object_id)]
            kept.append(keep)
            removed.append(gone)
            n_kept.append(int(keep.sum()))
            n_removed.append(gone.size)
            prev = snap
        arrays["snap_n"] = np.array(n_kept, dtype=np.int64)
        arrays["snap_removed_n"] = np.array(n_removed, dtype=np.int64)
        arrays["snap_removed"] = (np.concatenate(removed) if removed
                                  else np.zeros(0, dtype=np.int64))
        for f in Snapshot.FIELDS:
            parts = [getattr(s, f)[k] for s, k in zip(self.snapshots, kept, strict=True)]
            arrays[f"snap_{f}"] = (np.concatenate(parts) if parts else
                                   getattr(Snapshot.empty(0.0), f))
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
                cols = {f: z[f"{pre}snap_{f}"] for f in Snapshot.FIELDS}
                out.ticks += [(float(t), str(d), tuple(bool(x) for x in o)) for t, d, o in
                              zip(z[f"{pre}tick_t"], z[f"{pre}tick_date"],
                                  z[f"{pre}tick_open"], strict=True)]
                bounds = np.concatenate([[0], np.cumsum(z[f"{pre}snap_n"])])
                delta = f"{pre}snap_removed_n" in names
                if delta:
                    gone_at = np.concatenate([[0], np.cumsum(z[f"{pre}snap_removed_n"])])
                    gone_ids = z[f"{pre}snap_removed"]
                prev = None
                for k, t in enumerate(z[f"{pre}snap_t"]):
                    a, b = bounds[k], bounds[k + 1]
                    rows = {f: cols[f][a:b] for f in Snapshot.FIELDS}
                    if delta and prev is not None:
                        gone = gone_ids[gone_at[k]:gone_at[k + 1]]
                        stay = ~np.isin(prev.object_id, np.r_[gone, rows["object_id"]])
                        merged = {f: np.concatenate([getattr(prev, f)[stay], rows[f]])
                                  for f in Snapshot.FIELDS}
                        order = np.argsort(merged["object_id"], kind="stable")
                        rows = {f: v[order] for f, v in merged.items()}
                    prev = Snapshot(float(t), *(rows[f] for f in Snapshot.FIELDS))
                    out.snapshots.append(prev)
        return out
