"""A season's data for ``bench_soak.py``: a synthetic 30-night object store, a journal
tiled to 30 nights, and a store copied into PostgreSQL.

* :func:`synthetic_store` writes through the brain's own store code
  (:func:`brain.core.store.open_store`): every night, one light-curve row per object
  (as a closed night leaves it), then the catalogue once, with the meta a clean stop
  leaves (``closed_mjd``). Default size: 150,000 objects seen 10 times a night (1.5 M
  detections a night, about a simulated night's); no artefacts.
* :func:`tile_journal` copies a rehearsal's journal rows (commands, events,
  observations, visits, follow-ups, night jobs) back in time, night by night, with new
  ids, so that the journal holds as many nights as the store; detection messages are not
  copied (the daemon prunes them at each dawn).
* :func:`copy_store` copies a store (SQLite) into another URL (PostgreSQL) with COPY.
* :func:`fast_baseline`: the fast shell's exposures per night, the daemon's yardstick;
  :func:`journal_end`, :func:`journal_counts`, :func:`set_store_meta`, :func:`pg_config`,
  and reading the daemon's ``/metrics`` (:func:`scrape`, :func:`metric_sum`,
  :func:`loop_lag`).
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import yaml

from brain.config import DEFAULT_CONFIG, load_config
from brain.core.store import N_BANDS, empty_catalogue, open_store
from brain.shells.journal import Journal
from drivers.clock import parse_start
from observatory.ephemeris import night_date
from observatory.taxonomy import CLASSES
from observatory.times import unix_to_mjd

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0
METRIC = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$", re.M)
TILED = ("commands", "events", "observations", "visits", "followups", "night_jobs")


def _say(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def synthetic_store(path: Path, nights: int, end_unix: float, n_objects: int = 150_000,
                    per_night: int = 10, seed: int = 30) -> dict:
    """A store of ``nights`` closed nights, the last one's detections between 19 and 5
    hours before ``end_unix`` (a night's dark hours before a 05:30 UTC end). Returns its
    size."""
    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n_objects)
    dec = np.degrees(np.arcsin(rng.uniform(-0.5, 0.95, n_objects)))
    base = rng.uniform(15, 21.5, n_objects)
    ids = np.arange(n_objects, dtype=np.int64)
    hist = np.zeros((n_objects, N_BANDS, 5))
    hist[..., 3], hist[..., 4] = np.inf, -np.inf
    band = np.tile(np.arange(per_night) % N_BANDS, n_objects).astype(np.int8)
    store = open_store(f"sqlite:///{path}")
    end_mjd = float(unix_to_mjd(end_unix))
    for k in range(nights):
        night0 = end_mjd - (nights - 1 - k) - 0.8  # dusk
        mjd = night0 + np.sort(rng.uniform(0, 0.58, (n_objects, per_night)), axis=1).ravel()
        mag = (np.repeat(base, per_night) + rng.normal(0, 0.05, n_objects * per_night))
        err = np.full(mag.size, 0.03)
        store.write_detections(np.repeat(ids, per_night), mjd, band, mag, err)
        m = mag.reshape(n_objects, per_night)
        for b in range(N_BANDS):
            mb = m[:, band[:per_night] == b]
            h = hist[:, b]
            h[:, 0] += mb.shape[1]
            h[:, 1] += mb.sum(axis=1)
            h[:, 2] += (mb ** 2).sum(axis=1)
            h[:, 3] = np.minimum(h[:, 3], mb.min(axis=1))
            h[:, 4] = np.maximum(h[:, 4], mb.max(axis=1))
        store.set_meta("closed_mjd", repr(float(mjd.max()) + 0.01))
        store.commit()
        _say(f"synthetic store: night {k + 1}/{nights} ({time.monotonic() - t0:.0f} s)")
    cat = empty_catalogue(n_objects)
    cat["object_id"], cat["ra_deg"], cat["dec_deg"] = ids, ra, dec
    cat["first_mjd"] = end_mjd - (nights - 1) - 0.8
    cat["last_mjd"] = cat["classified_mjd"] = float(mjd.max())
    cat["n_det"] = cat["classified_ndet"] = nights * per_night
    cat["n_nights"] = nights
    cat["last_night"] = end_mjd - 0.8
    cat["prob"][np.arange(n_objects), rng.integers(0, len(CLASSES), n_objects)] = 1.0
    cat["hist"] = hist
    store.write_objects(cat)
    store.set_meta("synthetic", f"{nights}x{n_objects}x{per_night}")
    counts = store.counts()
    store.close()
    return {**counts, "nights": nights, "build_s": round(time.monotonic() - t0, 1),
            "bytes": path.stat().st_size}


def shift_to(store: Path, end: float) -> float:
    """Whole days (seconds) to move a journal ending at ``end`` so that it ends after the
    store's last detection (0: it does)."""
    span = store_span(store)
    last = (span[1] - 40587.0) * DAY if span else end  # MJD 40587 is the Unix epoch
    return max(0.0, math.ceil((last - end) / DAY)) * DAY


def store_span(path: Path) -> tuple[float, float] | None:
    """The first and last MJD of a SQLite store's light curves (None: empty)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        lo, hi = db.execute("SELECT MIN(mjd_first), MAX(mjd_last) FROM light_curves"
                            ).fetchone()
    finally:
        db.close()
    return None if hi is None else (float(lo), float(hi))


def tile_journal(path: Path, shift_s: float, period_s: float, copies: int) -> dict:
    """Move the journal's rows ``shift_s`` later (whole days: its nights then end with
    the store's), and add ``copies`` copies of them, each ``period_s`` earlier than the
    last. Returns the rows per table."""
    db = sqlite3.connect(path, isolation_level=None)
    cols = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in TILED}
    times = {"commands": ("t_sent", "deadline", "t_end"), "events": ("t",),
             "observations": ("t_start", "t_end"), "visits": ("t_start",),
             "followups": ("t_start", "t_end"), "night_jobs": ("world_t", "t")}
    keys = {"commands": "cmd_id", "observations": "obs_id", "followups": "cmd_id",
            "night_jobs": "job_id"}
    db.execute("BEGIN")
    top = {t: db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {t}").fetchone()[0]
           for t in TILED}
    if shift_s:
        for t, ts in times.items():
            db.execute(f"UPDATE {t} SET " + ", ".join(f"{c} = {c} + ?" for c in ts),
                       (shift_s,) * len(ts))
        db.execute("UPDATE detections SET t = t + ?", (shift_s,))
    for k in range(1, copies + 1):
        for t, ts in times.items():
            names = [c for c in cols[t] if c != "seq"]
            sel = [f"{c} - {k * period_s!r}" if c in ts else
                   f"{c} || '~{k}'" if c == keys.get(t) else c for c in names]
            db.execute(f"INSERT INTO {t} ({', '.join(names)}) "
                       f"SELECT {', '.join(sel)} FROM {t} WHERE rowid <= ?", (top[t],))
    db.execute("COMMIT")
    out = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TILED}
    db.close()
    return out


def copy_store(src: Path, url: str, since_mjd: float | None = None) -> dict:
    """Copy a SQLite store into ``url`` (PostgreSQL: COPY, in batches): the catalogue
    and meta whole, the light curves from ``since_mjd`` on (None: all)."""
    t0 = time.monotonic()
    open_store(url).close()  # the schema
    import psycopg  # lazy: only for a PostgreSQL copy

    lite = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    n = {}
    try:
        with psycopg.connect(url) as pg:
            pg.execute("DELETE FROM store_meta")
            for table, where, params in (
                    ("store_meta", "", ()), ("objects", "", ()),
                    ("light_curves", " WHERE mjd_first >= ?",
                     (-1e300 if since_mjd is None else since_mjd,))):
                names = [r[1] for r in lite.execute(f"PRAGMA table_info({table})")]
                cur = lite.execute(f"SELECT {', '.join(names)} FROM {table}{where}", params)
                n[table] = 0
                with pg.cursor() as pc, pc.copy(
                        f"COPY {table} ({', '.join(names)}) FROM STDIN") as cp:
                    while rows := cur.fetchmany(20_000):
                        for r in rows:
                            cp.write_row(r)
                        n[table] += len(rows)
                if table == "light_curves":
                    _say(f"copied {n[table]} light-curve rows into PostgreSQL")
            pg.execute("ANALYZE")
    finally:
        lite.close()
    return {"rows": n, "since_mjd": since_mjd, "copy_s": round(time.monotonic() - t0, 1)}


def fast_baseline(args, tmp: Path, nights: int, until: str) -> dict:
    """The fast shell (``brain simulate``, same seed, weather and nights): exposures per
    night in the rehearsal's world window, the number the daemon would reach if it kept
    up (docs/architecture.md: one core, two shells)."""
    out = tmp / "fast"
    t = time.monotonic()
    day = args.start[:10]
    r = subprocess.run([sys.executable, "-m", "brain", "simulate", "--seed", str(args.seed),
                        "--start", day, "--nights", str(nights), "--out", str(out),
                        "--quiet"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["brain simulate failed"])[-1]}
    cfg = load_config()
    t0, t1 = parse_start(args.start), parse_start(until)
    counts: dict[str, int] = {}
    with (out / "observations.csv").open() as fh:
        col = fh.readline().split(",").index("t_start")
        for line in fh:
            ts = float(line.split(",")[col])
            if t0 <= ts < t1:
                counts[night_date(cfg, ts)] = counts.get(night_date(cfg, ts), 0) + 1
    return {"wall_s": round(time.monotonic() - t, 1), "exposures": counts}


def journal_end(journal: Path) -> float:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return float(db.execute("SELECT MAX(t) FROM events").fetchone()[0])
    finally:
        db.close()


def set_store_meta(journal: Path, url: str) -> None:
    """A clean stop's meta: the store holds every detection the journal has."""
    j = Journal(journal)
    last = j.last_detection()
    j.close()
    store = open_store(url)
    store.set_meta("journal_detections", str(last))
    store.close()


def pg_config(tmp: Path, name: str, url: str) -> Path:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["store"] = {**data.get("store", {}), "url": url}
    path = tmp / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def scrape(port: int) -> dict[str, float] | None:
    """The daemon's /metrics as {name{labels}: value} (None: no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    return {f"{n}{lab or ''}": float(v) for n, lab, v in METRIC.findall(text)}


def metric_sum(m: dict, prefix: str, *has: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix) and all(h in k for h in has))


def loop_lag(first: dict, last: dict) -> tuple[float | None, int]:
    """The event loop's lag between two scrapes: its p99 (the bucket's upper bound; None:
    no turns, or beyond the last finite bound) and the turns over that bound."""
    name = "sitian_event_loop_lag_seconds_bucket"
    le = sorted((float(re.search(r'le="([^"]+)"', k)[1]), k) for k in last if
                k.startswith(name))
    if not le:
        return None, 0
    counts = [(b, last[k] - first.get(k, 0.0)) for b, k in le]
    total = counts[-1][1]
    over = int(total - counts[-2][1]) if len(counts) > 1 else 0
    if total <= 0:
        return None, over
    p99 = next(b for b, c in counts if c >= 0.99 * total)
    return (p99 if math.isfinite(p99) else None), over


def journal_counts(journal: Path, cfg, per_night: list[dict]) -> None:
    """Per night, from the journal: exposures, devices declared down, night jobs by
    status."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        exposures = [night_date(cfg, t) for (t,) in db.execute(
            "SELECT t_start FROM observations")]
        downs = [night_date(cfg, t) for (t,) in db.execute(
            "SELECT t FROM events WHERE name = 'down'")]
        jobs = db.execute("SELECT night, status, COUNT(*) FROM night_jobs "
                          "GROUP BY night, status").fetchall()
    finally:
        db.close()
    for n in per_night:
        n["exposures_journalled"] = exposures.count(n["night"])
        n["devices_down_events"] = downs.count(n["night"])
        n["night_jobs"] = {s: c for night, s, c in jobs if night == n["night"]}
