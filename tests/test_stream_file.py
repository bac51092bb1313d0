"""The follow-up stream on disk (brain/core/stream.py): what a replay reads back is what
the manager heard, bit for bit, while a field is stored only when it changed."""

from __future__ import annotations

import itertools
import zipfile

import numpy as np

from brain.core.stream import Snapshot, Stream, quantize_prob
from observatory.taxonomy import CLASSES


def _snapshot(rng, t: float, ids: np.ndarray, night: int) -> Snapshot:
    n = ids.size
    pos = np.random.default_rng(7)  # positions fixed per object, as in the catalogue
    ra_all, dec_all = pos.uniform(0, 360, 1000), pos.uniform(-30, 80, 1000)
    prob = rng.dirichlet(np.ones(len(CLASSES)), n)
    return Snapshot(t, ids.astype(np.int64), ra_all[ids], dec_all[ids],
                    rng.uniform(15, 21, n).astype(np.float32),
                    rng.normal(0, 0.1, n).astype(np.float32),
                    60000.0 + ids * 1e-3, rng.integers(3, 90, n).astype(np.int32),
                    np.full(n, night + 1, np.int16), prob.astype(np.float16),
                    rng.uniform(15, 21, n).astype(np.float32),
                    rng.uniform(0, 0.3, n).astype(np.float32))


def _stream(seed: int = 1) -> list[list[Snapshot]]:
    """Two nights of snapshots: objects come and go; between snapshots some rows change
    in one field only, some not at all."""
    rng = np.random.default_rng(seed)
    nights = []
    for night in range(2):
        snaps = []
        ids = np.sort(rng.choice(1000, 300, replace=False))
        s = _snapshot(rng, 1e9 + night * 86400, ids, night)
        snaps.append(s)
        for k in range(1, 6):
            keep = rng.random(s.n) > 0.1
            new = np.setdiff1d(rng.choice(1000, 20, replace=False), s.object_id[keep])
            fresh = _snapshot(rng, s.t + 1800 * k, new, night)
            rows = {f: np.concatenate([getattr(s, f)[keep], getattr(fresh, f)])
                    for f in Snapshot.FIELDS}
            order = np.argsort(rows["object_id"])
            rows = {f: v[order].copy() for f, v in rows.items()}
            m = rng.random(len(order)) < 0.3  # a third gain a detection
            rows["mag"][m] += 0.01
            rows["n_det"][m] += 1
            p = rng.random(len(order)) < 0.1  # a tenth reclassified
            rows["prob"][p] = rng.dirichlet(np.ones(len(CLASSES)), p.sum())
            s = Snapshot(s.t + 1800 * k, *(rows[f] for f in Snapshot.FIELDS))
            snaps.append(s)
        nights.append(snaps)
    return nights


def _same(a: Snapshot, b: Snapshot) -> None:
    assert a.t == b.t
    for f in Snapshot.FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f


def test_the_stream_reads_back_exactly_and_stores_what_changed(tmp_path):
    path = tmp_path / "stream.npz"
    nights = _stream()
    s = Stream()
    for night in nights:
        s.snapshots += night
        s.ticks.append((night[0].t, "2026-12-15", (True, False, True)))
        s.spill(path)  # night by night, as the fast shell writes it
    back = Stream.load(path)
    heard = [x for night in nights for x in night]
    assert len(back.snapshots) == len(heard) == 12
    for a, b in zip(heard, back.snapshots, strict=True):
        _same(a, b)
    # Probabilities are heard in steps of 1/255, as stored.
    p = back.snapshots[3].prob
    assert np.array_equal(quantize_prob(p), p) and np.unique(p).size <= 256
    # A position is stored when its object appears (again); the
    # magnitudes of the rows that changed, not of every row.
    with np.load(path) as z:
        for k, night in enumerate(nights):
            appear = night[0].n + sum(np.isin(b.object_id, a.object_id, invert=True).sum()
                                      for a, b in itertools.pairwise(night))
            assert z[f"p{k:04d}_snap_ra_deg"].size == appear
            assert z[f"p{k:04d}_snap_mag"].size < sum(x.n for x in night) / 2
            assert z[f"p{k:04d}_snap_prob"].dtype == np.uint8


def test_a_stream_of_whole_snapshots_still_reads(tmp_path):
    """The oldest layout (every row of every snapshot, float16 probabilities)."""
    night = _stream(2)[0]
    path = tmp_path / "old.npz"
    cols = {f"snap_{f}": np.concatenate([getattr(x, f) for x in night])
            for f in Snapshot.FIELDS}
    np.savez_compressed(path, tick_t=np.array([night[0].t]),
                        tick_date=np.array(["2026-12-15"]),
                        tick_open=np.array([[True, True, True]]),
                        snap_t=np.array([x.t for x in night]),
                        snap_n=np.array([x.n for x in night]), **cols)
    with zipfile.ZipFile(path) as z:
        assert not any(n.endswith("_changed.npy") for n in z.namelist())
    back = Stream.load(path)
    for a, b in zip(night, back.snapshots, strict=True):
        _same(a, b)
