"""The daemon keeps its objects in the store: the night's close writes it and prunes
the journal; a restart reads the catalogue and the active window, not the season."""

from __future__ import annotations

import numpy as np

from brain.config import load_config
from brain.core.events import DetectionsEvent
from brain.shells.daemon import Daemon
from drivers.clock import WorldClock, parse_start
from observatory.times import unix_to_mjd
from tests.test_nightjobs import _port

N_SRC = 50
T0 = parse_start("2026-12-15T15:00:00")


def _daemon(tmp_path, t: float) -> Daemon:
    return Daemon(load_config(), tmp_path / "journal.sqlite", WorldClock(t, 1.0),
                  router=f"tcp://127.0.0.1:{_port()}", pub=None)


def _night(d: Daemon, night: int, visits: int = 3, first: int = 0) -> None:
    """Three visits (g, r, i each) of 50 sources, as the devices' messages arrive."""
    rng = np.random.default_rng(night)
    ra = np.linspace(10, 60, N_SRC)
    dec = np.linspace(-5, 40, N_SRC)
    for v in range(first, first + visits):
        for b in range(3):
            t = T0 + night * 86400.0 + 600.0 * v + 60.0 * b
            arrays = {"ra_deg": ra + rng.normal(0, 0.1 / 3600, N_SRC),
                      "dec_deg": dec + rng.normal(0, 0.1 / 3600, N_SRC),
                      "mag": rng.normal(18.0, 0.05, N_SRC), "mag_err": np.full(N_SRC, 0.03),
                      "mjd": np.full(N_SRC, float(unix_to_mjd(t))),
                      "band": np.full(N_SRC, b, dtype=np.int64)}
            assert d.journal.detections(f"n{night}-v{v}-b{b}", 0, t, arrays)
            d.core.handle(DetectionsEvent(t, d._batch(arrays)))


def _journal_detections(d: Daemon) -> int:
    return d.journal.db.execute("SELECT COUNT(*) FROM detections").fetchone()[0]


def test_nights_close_into_the_store_and_a_restart_reads_the_window(tmp_path):
    d = _daemon(tmp_path, T0)
    try:
        for night in range(3):
            _night(d, night)
            closed = d.close_night(T0 + night * 86400.0 + 6 * 3600.0)
            assert closed["journal_pruned"] == 9  # the night's messages: in the store now
            assert _journal_detections(d) == 0
        _night(d, 3, visits=2)  # night 3 under way when the daemon stops
        d.core.flush_store()  # (associates what the loop's next tick would)
        ndet = d.core.associator.n_detections().copy()
        ids = d.core.associator.ids.copy()
        assert ndet.tolist() == [3 * 9 + 6] * N_SRC
        assert d.core.associator.n_window <= 3 * 9 * N_SRC  # two nights and tonight
    finally:
        d.close()

    d = _daemon(tmp_path, T0 + 3 * 86400.0 + 3 * 3600.0)
    try:
        store = d.store
        # Read: the catalogue and the last nights' detections; nothing replayed from
        # the journal (a clean stop wrote the store), not the nights before.
        assert store.reads["objects"] == N_SRC
        assert d.loaded["detections"] == store.reads["detections"] == (9 + 6) * N_SRC
        assert store.counts()["detections"] == (3 * 9 + 6) * N_SRC
        a = d.core.associator
        np.testing.assert_array_equal(a.ids, ids)
        np.testing.assert_array_equal(a.n_detections(), ndet)
        assert a.n_nights.tolist() == [4] * N_SRC
        # Whole light curves come from the store on demand.
        obj, mjd, *_ = a.history(np.arange(3))
        assert np.bincount(obj).tolist() == [3 * 9 + 6] * 3
        assert np.all(np.diff(mjd[obj == 0]) >= 0)  # in time order
        # Tonight goes on with the same objects.
        _night(d, 3, visits=1, first=2)
        assert a.n_objects == N_SRC
    finally:
        d.close()


def test_a_crash_replays_only_the_messages_after_the_last_write(tmp_path):
    d = _daemon(tmp_path, T0)
    _night(d, 0)
    d.close_night(T0 + 6 * 3600.0)
    _night(d, 1, visits=1)
    d.core.flush_store()  # a classification pass wrote the store...
    d._on_flush(T0 + 86400.0)
    _night(d, 1, visits=1, first=1)  # ...and more arrived before the process died
    d.journal.close()  # no d.close(): the store is not written again
    d.store.close()
    d.link.close()

    d = _daemon(tmp_path, T0 + 86400.0 + 3600.0)
    try:
        # The three messages after the write are replayed from the journal: exactly
        # those not in the store.
        a = d.core.associator
        assert d.store.counts()["detections"] == (9 + 3) * N_SRC
        d.core.flush_store()
        assert a.n_detections().tolist() == [9 + 6] * N_SRC
        assert d.store.counts()["detections"] == (9 + 6) * N_SRC
    finally:
        d.close()


def test_the_daemon_holds_no_season_history_in_memory(tmp_path):
    """Over nights of classification passes the daemon's follow-up keeps only its latest
    snapshot (the journal is its record; a recorded stream grew by every candidate of
    every pass, hundreds of MB a night), and the scheduler keeps the latest decision
    times only while the total keeps counting."""
    from policies.followup import make_policy

    d = Daemon(load_config(), tmp_path / "journal.sqlite", WorldClock(T0, 1.0),
               router=f"tcp://127.0.0.1:{_port()}", pub=None, policy=make_policy("greedy", 0))
    try:
        fu, core = d.core.followup, d.core
        kept = core.DECISIONS_KEPT
        for night in range(3):
            _night(d, night)
            t = T0 + night * 86400.0 + 3 * 3600.0
            core.flush_store()  # (associates what the loop's next tick would)
            core.finish_classification(t, *core.classification_job(everything=True)())
            assert fu.snapshot is not None and fu.snapshot.n == N_SRC
            core.decision_ms.extend([float(night)] * kept)
            core.decisions += kept
            d.close_night(T0 + night * 86400.0 + 6 * 3600.0)
            assert fu.stream.snapshots == [] and fu.stream.ticks == []
            assert len(core.decision_ms) == kept and set(core.decision_ms) == {float(night)}
        assert core.decisions == 3 * kept
    finally:
        d.close()
