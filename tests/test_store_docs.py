"""What docs/store.md tells an operator to run works as written: the SQLite to
PostgreSQL copy, the prune on both backends, a pg_dump backup restored into a new
database (a real PostgreSQL server, tests/pgserver.py)."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_store import (
    N_NIGHTS,
    NIGHT0,
    _assert_cat_equal,
    _assert_lc_equal,
    _catalogue,
    _detections,
    _sorted,
    _write_all,
)

from brain.core.store import open_store

DOC = (Path(__file__).resolve().parent.parent / "docs" / "store.md").read_text()
BACKENDS = ["sqlite", "postgresql"]


def _block(lang: str, containing: str) -> str:
    blocks = [b for b in re.findall(rf"```{lang}\n(.*?)```", DOC, re.S) if containing in b]
    assert len(blocks) == 1, f"docs/store.md: one {lang} block with {containing!r}"
    return blocks[0]


def _filled(url: str, seed: int = 4):
    """A store with detections and a catalogue of 60 objects; returns what it holds."""
    flushes, every = _detections(seed=seed, n_obj=60)
    store = open_store(url)
    _write_all(store, flushes)
    cat = _catalogue(seed, np.arange(60))
    store.write_objects(cat)
    store.commit()
    store.close()
    return every, cat


def _assert_same_store(a_url: str, b_url: str) -> None:
    a, b = open_store(a_url), open_store(b_url)
    try:
        assert a.counts() == b.counts()
        _assert_cat_equal(b.objects(), a.objects())
        ids = np.arange(a.next_object_id())
        _assert_lc_equal(b.light_curves(ids), a.light_curves(ids))
        # the flushes are copied as they were, not merged: the same rows a night selects
        night = NIGHT0 + N_NIGHTS - 1
        _assert_lc_equal(b.detections_since(night), a.detections_since(night))
        assert b.reads == a.reads
    finally:
        a.close()
        b.close()


def test_the_documented_copy_moves_an_sqlite_store_to_postgresql(tmp_path, pg_url):
    src = tmp_path / "store.sqlite"
    _filled(f"sqlite:///{src}")
    make_tables = _block("sh", "open_store(").split('-c "', 1)[1].rsplit('"', 1)[0]
    r = subprocess.run([sys.executable, "-c", make_tables.replace(
        "postgresql://sitian@dbhost/sitian", pg_url)], capture_output=True, text=True,
        timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    script = _block("sh", "COPY").split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    r = subprocess.run([sys.executable, "-", str(src), pg_url], input=script,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"objects 60 rows\nlight_curves \d+ rows\n", r.stdout), r.stdout
    _assert_same_store(f"sqlite:///{src}", pg_url)


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


def _run_script(url: str, sql: str) -> None:
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.executescript(sql)
    else:
        import psycopg  # lazy: only the PostgreSQL tests need it

        db = psycopg.connect(url)
        db.execute(sql)
    db.commit()
    db.close()


def test_the_documented_prune_forgets_old_rare_objects(url):
    every, cat = _filled(url)
    sql = _block("sql", "DELETE FROM light_curves")
    cutoff, fewest = 61000, 3
    assert f"last_mjd < {cutoff} AND n_det < {fewest}" in sql
    # some objects old and rare, some old with many detections, some recent and rare
    cat["last_mjd"] = np.where(np.arange(60) % 3 == 0, cutoff - 5.0, cutoff + 1.0)
    cat["n_det"] = np.where(np.arange(60) % 2 == 0, 1, 10)
    cat["last_mjd"][59], cat["n_det"][59] = cutoff - 5.0, 1  # the newest: kept all the same
    store = open_store(url)
    store.write_objects(cat)
    store.close()
    gone = (cat["last_mjd"] < cutoff) & (cat["n_det"] < fewest)
    gone[59] = False
    assert 5 < gone.sum() < 50
    _run_script(url, sql)
    store = open_store(url)
    try:
        _assert_cat_equal(store.objects(), cat[~gone])
        keep = ~np.isin(every[0], cat["object_id"][gone])
        _assert_lc_equal(store.light_curves(np.arange(60)), _sorted(*every, keep=keep))
        assert store.next_object_id() == 60
    finally:
        store.close()


def test_a_pg_dump_backup_restores_the_same_store(pg_server, pg_url, tmp_path):
    _filled(pg_url)
    dump = tmp_path / "store.dump"
    run = {"capture_output": True, "text": True, "timeout": 60, "check": False}
    r = subprocess.run([str(pg_server.bindir / "pg_dump"), "-Fc", "-f", str(dump), pg_url],
                       **run)
    assert r.returncode == 0, r.stderr
    # pg_url is a schema of its own in a shared database (tests/conftest.py)
    url, _, options = pg_url.partition("?")
    restored = pg_server.create_database(url.rpartition("/")[2] + "_restored")
    r = subprocess.run([str(pg_server.bindir / "pg_restore"), "-d", restored, str(dump)],
                       **run)
    assert r.returncode == 0, r.stderr
    _assert_same_store(pg_url, f"{restored}?{options}" if options else restored)
