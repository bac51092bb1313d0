"""The object store (brain/core/store.py, docs/store.md), on embedded SQLite and on a real
PostgreSQL server started for the session (tests/pgserver.py): light curves and the
catalogue round-trip exactly, across reopening; what a restart reads; the operator's
one-line errors."""

from __future__ import annotations

import socket
import sqlite3
import zlib

import numpy as np
import pgserver
import pytest

from brain.core.store import (
    CATALOGUE_DTYPE,
    LC_DTYPE,
    SCHEMA_VERSION,
    StoreError,
    empty_catalogue,
    open_store,
    pack,
    quantize,
    unpack,
)
from observatory.taxonomy import CLASSES

BACKENDS = ["sqlite", "postgresql"]
NIGHT0 = 61000.0  # MJD of the first night's start
N_NIGHTS = 4


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    """A new, empty store's URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(url):
    s = open_store(url)
    yield s
    s.close()


def _detections(seed: int = 11, n_obj: int = 40):
    """Seeded detections of objects 0..n_obj-1 over N_NIGHTS nights, two flushes a night:
    (flushes as lists of (obj, mjd, band, mag, err) arrays, all of them concatenated)."""
    rng = np.random.default_rng(seed)
    flushes = []
    for night in range(N_NIGHTS):
        for half in range(2):  # each flush within its own part of the night
            n = int(rng.integers(50, 200))
            obj = rng.integers(0, n_obj, n).astype(np.int64)
            # full float64 mantissas: no two times alike, none round in any decimal
            mjd = NIGHT0 + night + 0.1 + 0.15 * half + rng.random(n) * 0.1
            band = rng.integers(0, 3, n).astype(np.int8)
            mag = rng.uniform(14, 22, n).astype(np.float32)
            err = rng.uniform(0.005, 0.4, n).astype(np.float32)
            # at the store's precision, as the associator hands them over
            mjd, mag, err = quantize(mjd, mag, err)
            order = rng.permutation(n)  # written in no particular order
            flushes.append(tuple(a[order] for a in (obj, mjd, band, mag, err)))
    every = tuple(np.concatenate(parts) for parts in zip(*flushes, strict=True))
    return flushes, every


def _sorted(obj, mjd, band, mag, err, keep=None):
    keep = np.ones(len(obj), bool) if keep is None else keep
    obj, mjd, band, mag, err = (a[keep] for a in (obj, mjd, band, mag, err))
    order = np.lexsort((mjd, obj))
    return tuple(a[order] for a in (obj, mjd, band, mag, err))


def _assert_lc_equal(got, want):
    assert len(got) == 5
    for g, w, dtype in zip(got, want, (np.int64, np.float64, np.int8, np.float32,
                                       np.float32), strict=True):
        assert g.dtype == dtype
        assert g.shape == w.shape
        # bit for bit, not approximately
        assert g.astype(dtype).tobytes() == w.astype(dtype).tobytes()


def _write_all(store, flushes) -> int:
    rows = 0
    for f in flushes:
        rows += store.write_detections(*f)
        store.commit()
    return rows


def test_packed_records_are_the_documented_format():
    rng = np.random.default_rng(1)
    mjd, mag, err = quantize(NIGHT0 + np.sort(rng.random(7)),
                             rng.uniform(14, 22, 7), rng.uniform(0.005, 0.4, 7))
    band = rng.integers(0, 3, 7).astype(np.int8)
    blob = pack(mjd, band, mag, err)
    raw = zlib.decompress(blob)
    assert len(raw) == 8 + 4 * 6 + 7 + 2 * 7 + 2 * 7  # column after column, no padding
    t = np.round(mjd / 1e-8).astype(np.int64)
    assert np.frombuffer(raw[:8], "<i8")[0] == t[0]
    assert np.frombuffer(raw[8:32], "<u4").tolist() == np.diff(t).tolist()
    assert raw[32:39] == band.tobytes()
    assert np.frombuffer(raw[39:53], "<i2").tolist() == np.round(mag * 1000.0).tolist()
    assert np.frombuffer(raw[53:67], "<u2").tolist() == np.round(err * 1e4).tolist()
    back = unpack(blob)
    assert back.dtype == LC_DTYPE
    assert back["mjd"].tobytes() == mjd.tobytes()
    assert back["mag"].tobytes() == mag.tobytes() and back["err"].tobytes() == err.tobytes()
    # Unrounded input comes back at the store's precision: what quantize gives.
    raw_t = NIGHT0 + np.sort(rng.random(5))
    assert unpack(pack(raw_t, band[:5], mag[:5], err[:5]))["mjd"].tobytes() == quantize(
        raw_t, mag[:5], err[:5])[0].tobytes()


def test_light_curves_round_trip_exactly(url):
    flushes, every = _detections()
    store = open_store(url)
    rows = _write_all(store, flushes)
    assert rows == sum(len(np.unique(f[0])) for f in flushes)  # one row per object, flush
    store.close()

    store = open_store(url)  # what was written is on disk, not only in the connection
    try:
        ids = np.arange(40)
        _assert_lc_equal(store.light_curves(ids), _sorted(*every))
        # ids in any order, repeated, or unknown, select the same
        _assert_lc_equal(store.light_curves([39, 5, 5, 12, 1000]),
                         _sorted(*every, keep=np.isin(every[0], [5, 12, 39])))
        # nights 1 and 2 of three objects: since inclusive, before exclusive
        lo, hi = NIGHT0 + 1, NIGHT0 + 3
        some = [3, 17, 22]
        keep = np.isin(every[0], some) & (every[1] >= lo) & (every[1] < hi)
        _assert_lc_equal(store.light_curves(some, since_mjd=lo, before_mjd=hi),
                         _sorted(*every, keep=keep))
        _assert_lc_equal(store.light_curves(some, before_mjd=NIGHT0 + 1),
                         _sorted(*every, keep=np.isin(every[0], some)
                                 & (every[1] < NIGHT0 + 1)))
        # a restart's active window: every object's detections since a night's start
        _assert_lc_equal(store.detections_since(NIGHT0 + 2),
                         _sorted(*every, keep=every[1] >= NIGHT0 + 2))
        _assert_lc_equal(store.detections_since(NIGHT0 + N_NIGHTS), _sorted(
            *every, keep=np.zeros(len(every[0]), bool)))
        _assert_lc_equal(store.light_curves([]), _sorted(*every, keep=np.zeros(
            len(every[0]), bool)))
    finally:
        store.close()


def _catalogue(seed: int, ids) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cat = empty_catalogue(len(ids))
    cat["object_id"] = ids
    cat["ra_deg"] = rng.uniform(0, 360, len(ids))
    cat["dec_deg"] = rng.uniform(-30, 90, len(ids))
    cat["first_mjd"] = NIGHT0 + rng.random(len(ids))
    cat["last_mjd"] = cat["first_mjd"] + rng.random(len(ids)) * 3
    cat["n_det"] = rng.integers(1, 50, len(ids))
    cat["n_nights"] = rng.integers(1, 4, len(ids))
    cat["last_night"] = np.floor(cat["last_mjd"])
    cat["truth"] = np.where(rng.random(len(ids)) < 0.3, -1, rng.integers(0, 10**12, len(ids)))
    cat["classified_ndet"] = rng.integers(0, 50, len(ids))
    cat["prob"] = rng.dirichlet(np.ones(len(CLASSES)), len(ids)).astype(np.float32)
    # half the objects have history in some bands; the others keep the empty +-inf
    has = rng.random((len(ids), 3)) < 0.5
    hist = rng.normal(18, 2, (len(ids), 3, 5))
    cat["hist"] = np.where(has[..., None], hist, cat["hist"])
    # the reference: a magnitude, nothing there (+inf) or never reported (NaN)
    cat["ref"] = np.choose(rng.integers(0, 3, (len(ids), 3)),
                           [rng.normal(20, 1, (len(ids), 3)), np.inf, np.nan])
    return cat


def _assert_cat_equal(got, want):
    assert got.dtype == CATALOGUE_DTYPE
    assert got.shape == want.shape
    for name in CATALOGUE_DTYPE.names:
        assert got[name].tobytes() == want[name].tobytes(), name


def test_catalogue_upserts_and_reads_back_exactly(url):
    ids = np.arange(0, 300, 3)
    cat = _catalogue(5, ids)
    assert np.isinf(cat["hist"]).any()  # the empty history round-trips too
    store = open_store(url)
    store.write_objects(cat[::-1])  # any order
    store.write_objects(empty_catalogue())
    store.commit()
    _assert_cat_equal(store.objects(), cat)

    # replace some rows, add others: each object keeps one row, the last one written
    newer = _catalogue(6, np.r_[ids[10:20], [1000, 1001]])
    store.write_objects(newer)
    store.commit()
    store.close()
    want = np.concatenate([cat[:10], newer[:10], cat[20:], newer[10:]])
    store = open_store(url)
    try:
        _assert_cat_equal(store.objects(), want)
        some = [1001, 27, 27, 2, 30, 0]  # 2 was never written
        _assert_cat_equal(store.objects(some), want[np.isin(want["object_id"], some)])
        _assert_cat_equal(store.objects([]), empty_catalogue())
        assert store.counts()["objects"] == len(want)
    finally:
        store.close()


def test_known_keeps_the_objects_a_restart_needs(store):
    cat = _catalogue(8, np.arange(200))
    store.write_objects(cat)
    store.commit()
    since = NIGHT0 + 1.5
    cat["last_mjd"][7] = since  # the bounds are inclusive
    cat["n_det"][7] = 1
    cat["n_det"][8], cat["last_mjd"][8] = 3, NIGHT0
    store.write_objects(cat[7:9])
    got = store.known(min_detections=3, seen_since_mjd=since)
    keep = (cat["n_det"] >= 3) | (cat["last_mjd"] >= since)
    assert 0 < keep.sum() < len(cat)
    _assert_cat_equal(got, cat[keep])
    assert {7, 8} <= set(got["object_id"].tolist())
    _assert_cat_equal(store.known(min_detections=1000, seen_since_mjd=NIGHT0 + 100),
                      empty_catalogue())


def test_next_object_id_and_counts(store):
    assert store.next_object_id() == 0
    assert store.counts() == {"objects": 0, "light_curve_rows": 0, "detections": 0}
    flushes, every = _detections(n_obj=42)
    rows = _write_all(store, flushes)
    # an object with detections but not yet in the catalogue still holds its id
    assert store.next_object_id() == int(every[0].max()) + 1
    store.write_objects(_catalogue(2, [5, 17, 100]))
    store.commit()
    assert store.next_object_id() == 101
    assert store.counts() == {"objects": 3, "light_curve_rows": rows,
                              "detections": len(every[0])}


def test_reads_count_what_was_read(store):
    flushes, every = _detections(n_obj=30)
    _write_all(store, flushes)
    store.write_objects(_catalogue(3, np.arange(30)))
    store.commit()
    assert store.reads == {"objects": 0, "light_curve_rows": 0, "detections": 0}
    store.objects([1, 2, 3, 99])
    assert store.reads["objects"] == 3
    known = store.known(min_detections=25, seen_since_mjd=NIGHT0 + 100)
    assert store.reads["objects"] == 3 + len(known)
    lc = store.light_curves([4, 9])
    n_rows = sum(np.isin([4, 9], f[0]).sum() for f in flushes)
    assert store.reads["light_curve_rows"] == n_rows
    assert store.reads["detections"] == len(lc[0]) == np.isin(every[0], [4, 9]).sum()
    since = store.detections_since(NIGHT0 + N_NIGHTS - 1)
    last_rows = sum(len(np.unique(f[0])) for f in flushes[-2:])
    assert store.reads["light_curve_rows"] == n_rows + last_rows
    assert store.reads["detections"] == len(lc[0]) + len(since[0])


# Errors: one line for the operator ------------------------------------------------------
def _one_line(exc: StoreError) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return text


@pytest.mark.parametrize("bad", ["mysql://db/x", "sqlite://relative", "store.sqlite", ""])
def test_an_unknown_url_is_refused(bad):
    with pytest.raises(StoreError) as e:
        open_store(bad)
    assert "expected sqlite:///PATH or postgresql://" in _one_line(e.value)


def test_an_sqlite_store_that_cannot_be_opened(tmp_path):
    with pytest.raises(StoreError) as e:
        open_store(f"sqlite:///{tmp_path}")  # a directory
    assert "cannot open the object store" in _one_line(e.value)
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n" * 100)
    with pytest.raises(StoreError) as e:
        open_store(f"sqlite:///{other}")
    assert "not a database" in _one_line(e.value)


def test_an_unreachable_postgresql_server(pg_server):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as e:
        open_store(f"postgresql://brain:s3cret@127.0.0.1:{port}/brain")
    text = _one_line(e.value)
    assert "cannot open the object store" in text and str(port) in text
    assert "s3cret" not in text  # the password stays out of logs
    with pytest.raises(StoreError) as e:  # the server is there, the database is not
        open_store(pg_server.url("no_such_db"))
    assert "no_such_db" in _one_line(e.value)


def _set_meta(url: str, key: str, value: str) -> None:
    store = open_store(url)
    mark = store.mark
    store.db.execute(f"UPDATE store_meta SET value = {mark} WHERE key = {mark}", (value, key))
    store.close()


def test_a_store_of_another_schema_version_is_refused(url):
    _set_meta(url, "schema", str(SCHEMA_VERSION + 1))
    with pytest.raises(StoreError) as e:
        open_store(url)
    text = _one_line(e.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in text and "docs/store.md" in text


def _run_sql(url: str, statements: list[str]) -> None:
    """Run ``statements`` on the database of ``url`` without the store."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
    else:
        import psycopg  # lazy: only the PostgreSQL tests need it

        db = psycopg.connect(url)
    for sql in statements:
        db.execute(sql)
    db.commit()
    db.close()


@pytest.mark.parametrize("sql", [
    ["CREATE TABLE store_meta (k TEXT)"],  # someone else's table of that name
    ["CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT)",
     "INSERT INTO store_meta VALUES ('schema', 'two')"],
    ["CREATE TABLE objects (id TEXT)"],
    ["CREATE TABLE light_curves (object_id BIGINT, mjd_first FLOAT, mjd_last FLOAT)"],
], ids=["meta", "version", "objects", "light_curves"])
def test_a_database_that_is_not_a_store_is_refused(url, sql):
    _run_sql(url, sql)
    with pytest.raises(StoreError) as e:
        open_store(url)
    text = _one_line(e.value)
    assert url.rpartition("/")[2] in text
    assert ("schema version two" in text if "two" in sql[-1]
            else "not an object store this brain can use" in text)


def test_missing_server_binaries_name_the_debian_package(monkeypatch):
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    with pytest.raises(pgserver.PgServerError, match="Debian's postgresql package"):
        pgserver.find_bindir()


def test_a_schema_2_store_is_migrated_in_place(url):
    """A store written by the brain before the reference column (schema 2) opens: the
    objects gain ``ref`` (unknown for the rows already there) and nothing else
    changes."""
    b, d = ("BLOB" if url.startswith("sqlite") else "BYTEA"), "DOUBLE PRECISION"
    prob = zlib.compress(np.full(len(CLASSES), 1 / len(CLASSES), "<f4").tobytes(), 1)
    hist = zlib.compress(np.zeros((3, 5), "<f8").tobytes(), 1)
    _run_sql(url, [
        "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO store_meta VALUES ('schema', '2')",
        f"INSERT INTO store_meta VALUES ('classes', '{','.join(CLASSES)}')",
        f"""CREATE TABLE objects (object_id BIGINT PRIMARY KEY, ra_deg {d} NOT NULL,
            dec_deg {d} NOT NULL, first_mjd {d} NOT NULL, last_mjd {d} NOT NULL,
            n_det INTEGER NOT NULL, n_nights INTEGER NOT NULL, last_night {d} NOT NULL,
            truth BIGINT NOT NULL, classified_ndet INTEGER NOT NULL,
            classified_mjd {d} NOT NULL, prob {b} NOT NULL, hist {b} NOT NULL)""",
        f"""CREATE TABLE light_curves (object_id BIGINT NOT NULL, mjd_first {d} NOT NULL,
            mjd_last {d} NOT NULL, n INTEGER NOT NULL, data {b} NOT NULL)""",
    ])
    old = _catalogue(3, [7])
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        mark = "?"
    else:
        import psycopg  # lazy: only the PostgreSQL tests need it

        db = psycopg.connect(url)
        mark = "%s"
    r = old[0]
    db.execute(f"INSERT INTO objects VALUES ({', '.join([mark] * 13)})",
               (7, float(r["ra_deg"]), float(r["dec_deg"]), float(r["first_mjd"]),
                float(r["last_mjd"]), int(r["n_det"]), int(r["n_nights"]),
                float(r["last_night"]), int(r["truth"]), int(r["classified_ndet"]),
                float(r["classified_mjd"]), prob, hist))
    db.commit()
    db.close()

    store = open_store(url)
    try:
        got = store.objects()
        assert got["object_id"].tolist() == [7] and got["n_det"][0] == r["n_det"]
        assert np.isnan(got["ref"]).all()  # unknown: written before the column
        fresh = _catalogue(4, [7, 8])
        store.write_objects(fresh)
        store.commit()
        _assert_cat_equal(store.objects(), fresh)
    finally:
        store.close()
    reopened = open_store(url)  # now a schema-3 store: opens without migrating again
    try:
        _assert_cat_equal(reopened.objects(), fresh)
    finally:
        reopened.close()
