"""A season in bounded memory: the associator keeps a catalogue and the last nights'
detections, the rest is in the object store; the known sky is not new; a restart reads
only the catalogue and the active window."""

from __future__ import annotations

import numpy as np
import pytest

from brain.core.association import Associator, DetectionBatch
from brain.core.followup import candidate_ids
from brain.core.store import open_store

MJD0 = 61000.0
N_VAR = 400  # steady variable stars, seen every night
RADIUS = 2.0


def _sky(seed: int = 3):
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, N_VAR)
    dec = np.degrees(np.arcsin(rng.uniform(-0.5, 0.9, N_VAR)))
    base = rng.uniform(15, 19, N_VAR)
    return rng, ra, dec, base


def _night(rng, ra, dec, base, night: int, n_bogus: int = 300, shift=None,
           spacing: float = 0.05) -> list:
    """Four visits in g, r, i of every variable (amplitude 0.3 mag) and artefacts,
    ``spacing`` days apart."""
    out = []
    for v in range(4):
        mjd = MJD0 + night + 0.1 + spacing * v
        n = ra.size
        band = np.tile(np.arange(3), n)
        mag = (np.repeat(base, 3) + 0.3 * np.sin(rng.uniform(0, 2 * np.pi, 3 * n)))
        if shift is not None:
            mag = mag + np.repeat(shift, 3)
        jit = rng.normal(0, 0.2 / 3600, (2, 3 * n))
        b_ra, b_dec = rng.uniform(0, 360, n_bogus), rng.uniform(-30, 80, n_bogus)
        out.append(DetectionBatch(
            np.r_[np.repeat(ra, 3) + jit[0], b_ra], np.r_[np.repeat(dec, 3) + jit[1], b_dec],
            np.full(3 * n + n_bogus, mjd) + np.r_[np.zeros(3 * n), rng.uniform(0, 0.01, n_bogus)],
            np.r_[band, np.zeros(n_bogus, int)].astype(np.int8),
            np.r_[mag, np.full(n_bogus, 20.5)].astype(np.float32),
            np.full(3 * n + n_bogus, 0.03, np.float32),
            np.r_[np.repeat(np.arange(n), 3), np.full(n_bogus, -1)]))
    return out


def test_memory_is_bounded_over_a_month(tmp_path):
    """Thirty nights of 400 variables and 300 artefacts a visit: the catalogue holds the
    variables and the recent artefacts, the window two nights; the store holds it all."""
    rng, ra, dec, base = _sky()
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    a = Associator(RADIUS, store=store, memory_nights=2, orphan_days=2.0)
    sizes = []
    for night in range(30):
        for b in _night(rng, ra, dec, base, night):
            a.add(b)
        a.close_night(MJD0 + night + 0.9)
        sizes.append((a.n_objects, a.n_window, len(a.cat), len(a.det["obj"].a)))
    per_night = 4 * (3 * N_VAR + 300)
    # Objects: the variables and at most three nights of artefacts (seen once each).
    assert max(s[0] for s in sizes[5:]) <= N_VAR + 3 * 4 * 300
    assert sizes[-1][0] == sizes[10][0]  # flat from the first days on
    # The window: at most two nights of detections; arrays sized to it, not the season.
    assert max(s[1] for s in sizes) <= 2 * per_night
    assert max(s[3] for s in sizes[5:]) <= 4 * per_night + 1024
    assert max(s[2] for s in sizes[5:]) <= 2 * (N_VAR + 3 * 4 * 300) + 1024
    # Everything reached the store, but for the artefacts forgotten (seen once, more
    # than two days ago): the last two nights' are still there. Each variable has its
    # whole month there.
    assert store.counts()["detections"] == 30 * 4 * 3 * N_VAR + 2 * 4 * 300
    rows = a.rows_of(a.ids[a.truth >= 0])
    assert rows.size == N_VAR and np.all(a.n_nights[rows] == 30)
    obj, mjd, *_ = a.history(rows[:5])
    assert np.bincount(obj, minlength=rows[4] + 1)[rows[:5]].tolist() == [360] * 5
    assert np.all(np.diff(mjd[obj == rows[0]]) >= 0)
    # Nights before the window are one row per object and 4-day span: a variable seen
    # on 30 nights has 9 rows at most (eight spans, the window's night), not 30.
    per_object = dict(store._query("SELECT object_id, COUNT(*) FROM light_curves "
                                   "GROUP BY object_id"))
    var_rows = [per_object[int(i)] for i in a.ids[rows]]
    assert max(var_rows) <= 9 and min(var_rows) >= 8, sorted(set(var_rows))
    store.close()


def test_a_known_variable_is_not_new_until_it_changes(tmp_path):
    rng, ra, dec, base = _sky(4)
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    a = Associator(RADIUS, store=store)
    for night in range(5):
        for b in _night(rng, ra, dec, base, night, n_bogus=0):
            a.add(b)
        now = MJD0 + night + 0.9
        cand = candidate_ids(a, 3, now, new_days=3.0, change_mag=0.5, classified_only=False)
        if night < 3:
            assert cand.size == N_VAR  # first seen within three days: new
        else:
            assert cand.size == 0  # the known sky: steady variables are not candidates
        a.close_night(now)
    # Night 5: ten of them brighten by 2 mag, the rest stay within their history.
    shift = np.zeros(N_VAR)
    shift[:10] = -2.0
    for b in _night(rng, ra, dec, base, 5, n_bogus=0, shift=shift):
        a.add(b)
    cand = candidate_ids(a, 3, MJD0 + 5.9, new_days=3.0, change_mag=0.5, classified_only=False)
    assert sorted(a.truth[cand].tolist()) == list(range(10))
    store.close()


def test_restart_reads_the_catalogue_and_the_window_only(tmp_path):
    rng, ra, dec, base = _sky(5)
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    store = open_store(url)
    a = Associator(RADIUS, store=store, memory_nights=2)
    for night in range(10):
        for b in _night(rng, ra, dec, base, night):
            a.add(b)
        a.close_night(MJD0 + night + 0.9)
    # Night 10 in progress when the brain stops: half of it flushed.
    batches = _night(rng, ra, dec, base, 10)
    for b in batches[:2]:
        a.add(b)
    a.flush()
    before = (a.ids.copy(), a.n_detections().copy(), a.n_nights.copy(), a.cat["hist"].copy())
    store.close()

    store = open_store(url)
    b2 = Associator(RADIUS, store=store, memory_nights=2)
    got = b2.load(min_detections=3, now_mjd=MJD0 + 10.2)
    per_night = 4 * (3 * N_VAR + 300)
    # Read: the known objects and the window (last night and tonight so far), not ten
    # nights of light curves.
    assert store.reads["detections"] == got["detections"] == per_night + per_night // 2
    assert store.reads["objects"] == got["objects"] == b2.n_objects
    # Artefacts seen once are forgotten after two days, with their detection: at this
    # restart those before MJD0 + 8.2 (half of night 8's).
    assert store.counts()["detections"] == 10 * 12 * N_VAR + 1200 + 600 + per_night // 2
    np.testing.assert_array_equal(b2.ids, before[0][np.isin(before[0], b2.ids)])
    r = b2.rows_of(before[0])
    np.testing.assert_array_equal(b2.n_detections()[r[r >= 0]], before[1][r >= 0])
    # It goes on: the rest of tonight associates to the same objects, and tonight is
    # folded into the histories once, at close.
    for b in batches[2:]:
        rows = b2.add(b)
        assert np.all(b2.truth[rows[b.truth >= 0]] == b.truth[b.truth >= 0])
    b2.close_night(MJD0 + 10.9)
    var = b2.rows_of(b2.ids[b2.truth >= 0])
    assert np.all(b2.cat["hist"][var][:, :, 0].sum(axis=1) == 11 * 12)
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_closed_night_is_one_row_per_object_with_every_detection(tmp_path, request,
                                                                   backend):
    """Flushes during the night write small rows; closing the night rewrites them as one
    row per object, losing and duplicating nothing, also after a restart mid-night."""
    rng, ra, dec, base = _sky(6)
    url = (f"sqlite:///{tmp_path / 'store.sqlite'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    store = open_store(url)
    a = Associator(RADIUS, store=store, memory_nights=2)
    for night in range(2):
        for b in _night(rng, ra, dec, base, night):
            a.add(b)
            a.flush()  # four flushes a night: four rows per variable
        if night == 0:
            assert store.counts()["light_curve_rows"] == 4 * (N_VAR + 300)
        a.close_night(MJD0 + night + 0.9)
        assert store.counts()["light_curve_rows"] == (night + 1) * (N_VAR + 4 * 300)
    # Tonight: two visits flushed, then the brain stops and a new one goes on.
    batches = _night(rng, ra, dec, base, 2)
    for b in batches[:2]:
        a.add(b)
        a.flush()
    store.close()
    store = open_store(url)
    b2 = Associator(RADIUS, store=store, memory_nights=2)
    b2.load(min_detections=3, now_mjd=MJD0 + 2.2)
    for b in batches[2:]:
        b2.add(b)
        b2.flush()
    b2.close_night(MJD0 + 2.9)
    per_night = 4 * (3 * N_VAR + 300)
    counts = store.counts()
    # Night 2 is the window; nights 0 and 1, before it, one row per object (one span);
    # night 0's artefacts (seen once, two days ago) are forgotten, also by the brain
    # that started mid-night.
    assert (counts["light_curve_rows"], counts["detections"]) == (2 * N_VAR + 2 * 4 * 300,
                                                                 3 * per_night - 1200)
    var = b2.rows_of(b2.ids[b2.truth >= 0])
    obj, mjd, band, _mag, _err = store.light_curves(b2.ids[var])
    assert obj.size == 3 * 12 * N_VAR and np.all(np.diff(mjd[obj == obj[0]]) >= 0)
    assert np.unique(np.c_[obj, mjd, band], axis=0).shape[0] == obj.size  # no twice
    assert np.all(np.bincount(np.searchsorted(b2.ids[var], obj)) == 36)
    store.close()


def test_a_long_night_is_whole_in_the_window_and_counted_once(tmp_path):
    """Three sites make nights of 14 hours and more: the window keeps whole nights, so an
    object's whole light curve (store and window) has every detection exactly once."""
    rng, ra, dec, base = _sky(7)
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    a = Associator(RADIUS, store=store, memory_nights=2)
    per_night = 4 * (3 * N_VAR + 300)
    for night in range(4):
        for b in _night(rng, ra, dec, base, night, spacing=0.2):  # 0.1 to 0.7: 14.4 h
            a.add(b)
        a.close_night(MJD0 + night + 0.75)
        assert a.n_window == per_night  # the night just closed, whole
    var = a.rows_of(a.ids[a.truth >= 0])
    obj, mjd, band, *_ = a.history(var)
    assert np.all(np.bincount(obj)[var] == 4 * 12)
    assert np.unique(np.c_[obj, mjd, band], axis=0).shape[0] == obj.size
    store.close()


def test_forgotten_artefacts_leave_the_store_unless_kept_and_ids_are_never_reused(tmp_path):
    _rng, ra, dec, base = _sky(8)
    counts, next_ids = {}, {}
    for keep in (False, True):
        url = f"sqlite:///{tmp_path / f'store-{keep}.sqlite'}"
        store = open_store(url)
        a = Associator(RADIUS, store=store, memory_nights=2, keep_orphans=keep)
        for night in range(4):
            for b in _night(np.random.default_rng(night), ra, dec, base, night):
                a.add(b)
            a.close_night(MJD0 + night + 0.9)
        # Three cloudy nights: nothing new, and every artefact is forgotten, the newest
        # objects (the highest ids) among them.
        for night in range(4, 7):
            a.close_night(MJD0 + night + 0.9)
        assert a.n_objects == N_VAR
        counts[keep] = store.counts()
        next_ids[keep] = a.next_id
        store.close()
        again = Associator(RADIUS, store=open_store(url), memory_nights=2)
        assert again.next_id == a.next_id > a.ids.max() + 4 * 300  # no id given twice
        again.store.close()
    assert counts[False]["detections"] == 4 * 12 * N_VAR
    assert counts[True]["detections"] == 4 * (12 * N_VAR + 4 * 300)
    assert counts[False]["objects"] == counts[True]["objects"] == N_VAR
