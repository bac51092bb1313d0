"""Soak: the observatory daemon (``brain run``, default hosting: Ray) with ``brain
sim-drivers`` (all 60 devices) over several nights at a high world-clock speed, then
restarts on a 30-night store and journal, on SQLite and on PostgreSQL (issue 19).

Phases, each with its own drivers (same ``--start``/``--speed``) and journal directory:

1. **Rehearsal** (SQLite, ``--nights`` nights from ``--start`` 06:00 UTC, 4 h before
   the first dusk, to 04:30 UTC after the last night's dawn and report jobs). Sampled
   every second: the RSS (and PSS) of the daemon's process tree (``brain run`` and its
   children: Ray's processes and workers, night-job subprocesses; psutil), the RSS of
   ``brain run`` alone, their CPU time, and the world time (the journal's latest event);
   ``/metrics`` every 2 s. Reported per night (``observatory.ephemeris.night_date``, noon
   to noon at the array's longitude): peak RSS/PSS, exposures, the event loop's lag (p99
   of ``sitian_event_loop_lag_seconds``, wall and world seconds; turns over 1 s),
   devices declared down, night jobs, CPU (cores); the third night's peak over the
   first's (target <= 1.2).
   ``all_up_s``: from starting ``brain run`` to ``sitian_device_up`` summing to 60
   (target <= 20 s). **Keeping up**: the fast shell (``brain simulate``, same seed and
   weather) is the in-run baseline of each night's exposures; ``exposures_vs_fast`` >=
   0.95 on every night is ``keeps_up``. (``--no-fast``: none.)
2. **Restarts** (``brain run`` started again, drivers at the journal's world time):
   ``loop_s`` (its log says the loop starts), ``all_up_s``, ``stop_s`` (SIGTERM to
   exit), on

   * ``empty``: a new journal and store, at the same world time (the in-run baseline);
   * ``rehearsal``: a copy of the rehearsal's directory (journal and store);
   * ``journal30``: its journal tiled to 30 nights (``soak_data.tile_journal``: restart
     reads some journal tables whole), its store;
   * ``season``: that journal and a 30-night store: ``--store-from PATH`` (a
     ``brain simulate --nights 30`` store.sqlite; the journal is moved by whole days to
     end after it) or, without it, a synthetic one (``soak_data.synthetic_store``:
     ``--synthetic-objects`` objects x 10 detections a night, default 150,000: 1.5 M
     detections a night, 2-3 min to build; kept in ``--keep`` and reused).
3. **PostgreSQL** (``--backends`` with ``postgresql``): a real server
   (``tests/pgserver.py``), ``store.url`` in a config file; a ``--pg-nights`` rehearsal
   (default 1; 0: none) and the ``empty``, ``rehearsal`` and ``season`` restarts. The
   season store is copied in with COPY; ``--pg-store-nights K`` copies only its last K
   nights of light curves (the catalogue whole), as the JSON's ``store_copy`` says.

Speed: on the 2-core machine, shared with a 30-night simulation (load 2-4) and niced,
the daemon got, of the fast shell's exposures between 10:00 and 14:00 UTC on the first
night, 0.93 at 50x (10:00-12:00; a stall at dusk cost 11 world minutes), 0.79 at 100x,
0.72 at 150x, 0.6 at 300x; 0.25 over a whole night at 600x. No process was saturated
(at 300x: brain run 0.5 of a core, its Ray children 0.75, the drivers 0.16): each wall
millisecond of an exposure's round trip costs ``speed`` ms of telescope time. The
default, 300x, does not keep up (``exposures_vs_fast`` says by how much) but runs the
3 nights in 14 minutes; ``--speed 50`` is a faithful soak, 85 minutes for 3 nights.
The default run (3 nights at 300x, both backends, synthetic store) takes about 27
minutes: measured with ``--store-from`` (a 30-night ``brain simulate`` store) and
``--pg-nights 0``, 20 minutes (SQLite rehearsal 14.2, fast baseline 3, 6 restarts
15-25 s each, PostgreSQL copy 5 s); the PostgreSQL rehearsal adds 5, the synthetic
store 2.2 (once per ``--keep``). It
prints one JSON object, with ``load_avg`` through each phase (the machine's other work
slows everything); ``partial.json`` in the run's directory has what was measured so far.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_soak.py [--nights 3] [--speed 300]
        [--store-from PATH] [--backends sqlite,postgresql] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg
from bench_daemon_start import REPO, _devices_up, _port, stop_procs

sys.path.insert(0, str(REPO / "tests"))
from pgserver import PgServer, PgServerError
from soak_data import (
    DAY,
    copy_store,
    fast_baseline,
    journal_counts,
    journal_end,
    loop_lag,
    metric_sum,
    pg_config,
    scrape,
    set_store_meta,
    shift_to,
    store_span,
    synthetic_store,
    tile_journal,
)

from brain.config import load_config
from brain.core.store import StoreError
from drivers.clock import parse_start
from observatory.ephemeris import night_date

START = "2026-12-15T06:00:00"  # the night's start (05:38 UTC), 4 h before the first dusk
SPEED = 300.0
SEASON_NIGHTS = 30
START_TIMEOUT_S = 240.0
KEEP_UP = 0.95  # the daemon keeps up: a night's exposures >= 95 % of the fast shell's
TARGETS = {"rss_night3_over_night1": 1.2, "all_up_s": 20.0, "exposures_vs_fast": KEEP_UP}
LOOP_MARK = re.compile(r"brain \w+ on tcp://")  # start_daemon's last line: the loop runs


RESULTS: dict = {}  # the JSON so far: each phase saves it as it starts (partial.json)


class SoakError(RuntimeError):
    """A phase could not run (one line)."""


class Stopped(Exception):
    """SIGTERM: the phases stop their daemons and drivers, the JSON so far is printed."""


def _stopped(*_) -> None:
    raise Stopped("stopped by SIGTERM")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _mb(b: float) -> float:
    return round(b / 2**20, 1)


class Phase:
    """One ``brain run`` with its own ``brain sim-drivers``: started, sampled, stopped."""

    def __init__(self, label: str, tmp: Path, journal: Path, args, world_start: str,
                 config: Path | None = None, until: str | None = None, nights: int = 1,
                 fresh: bool = False):
        self.label, self.tmp, self.journal, self.args = label, tmp, journal, args
        (tmp / "partial.json").write_text(json.dumps(RESULTS))
        self.config, self.until = config, until
        self.router, self.pub = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
        self.metrics_port, self.api_port = _port(), _port()
        self.env = dict(os.environ, PYTHONPATH=str(REPO),
                        BRAIN_RAY_TMP=tempfile.mkdtemp(prefix="soak-ray-", dir="/tmp"))
        self.log = (tmp / f"{label}.log").open("a", buffering=1)  # readable as it runs
        self.marks: dict[str, float] = {}
        self.cpu_seen: dict[int, float] = {}
        self.tree_cpu = 0.0
        self.t0 = 0.0
        cfg = ["--config", str(config)] if config else []
        link = [*cfg, "--speed", str(args.speed), "--router", self.router, "--pub", self.pub]
        drv = [sys.executable, "-m", "brain", "sim-drivers", *link, "--start", world_start,
               "--nights", str(nights), "--seed", str(args.seed)]  # stopped by stop()
        self.drivers = subprocess.Popen(drv, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True)
        if not self.drivers.stdout.readline():  # "serving 60 simulated devices ...": up
            raise SoakError(f"{label}: brain sim-drivers exited ({tmp / label}.log)")
        # --start: a restart resumes where its journal ends; a fresh one starts there
        run = [sys.executable, "-m", "brain", "run", *link,
               "--start", world_start if fresh else args.start,
               "--journal", str(journal), "--metrics-port", str(self.metrics_port),
               "--api-port", str(self.api_port), "--seed", str(args.seed)]
        if until:
            run += ["--until", until]
        self.t0 = time.monotonic()
        self.daemon = subprocess.Popen(run, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        self.proc = psutil.Process(self.daemon.pid)
        self.drivers_proc = psutil.Process(self.drivers.pid)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.daemon.stdout:
            self.log.write(line)
            if "loop" not in self.marks and LOOP_MARK.search(line):
                self.marks["loop"] = time.monotonic() - self.t0

    def tree(self) -> dict:
        """RSS and CPU seconds of ``brain run`` and of its whole process tree."""
        out = {"rss": 0, "pss": 0, "procs": 0}
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:  # PSS (smaps_rollup, 0.1 ms): shared pages split among the processes
                mem, cpu = p.memory_full_info(), sum(p.cpu_times()[:2])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss = mem.rss
            out["rss"] += rss
            out["pss"] += getattr(mem, "pss", rss)
            out["procs"] += 1
            # the tree's CPU: each process's time since it was last seen (children come
            # and go; a gone one keeps what it was counted for)
            self.tree_cpu += max(0.0, cpu - self.cpu_seen.get(p.pid, 0.0))
            self.cpu_seen[p.pid] = cpu
            if p.pid == self.proc.pid:
                out["daemon_rss"], out["daemon_cpu"] = rss, cpu
        out["cpu"] = self.tree_cpu
        try:  # the simulated drivers: one process for 60 devices, photometry included
            out["drivers_cpu"] = sum(self.drivers_proc.cpu_times()[:2])
        except psutil.Error:
            out["drivers_cpu"] = 0.0
        return out

    def wait_up(self) -> dict:
        """Until the loop runs and 60 devices are up: seconds from the start of each."""
        up = None
        while time.monotonic() - self.t0 < START_TIMEOUT_S and self.daemon.poll() is None:
            if up is None and _devices_up(self.metrics_port) == 60:
                up = round(time.monotonic() - self.t0, 2)
            if up is not None and "loop" in self.marks:
                break
            time.sleep(0.2)
        loop = self.marks.get("loop")
        if self.daemon.poll() is not None:
            raise SoakError(f"{self.label}: brain run exited {self.daemon.returncode} "
                            f"(log {self.log.name})")
        if up is None:
            raise SoakError(f"{self.label}: 60 devices not up within {START_TIMEOUT_S:.0f} s "
                            f"(loop {loop}; log {self.log.name})")
        return {"loop_s": None if loop is None else round(loop, 2), "all_up_s": up}

    def stop(self) -> float | None:
        """SIGTERM to the daemon (if still running), then the drivers; the daemon's
        seconds to exit."""
        took = None
        for p in (self.daemon, self.drivers):
            if p.poll() is None:
                t = time.monotonic()
                stop_procs([p], 120)
                if p is self.daemon:
                    took = round(time.monotonic() - t, 2)
        self._reader.join(10)
        self.log.close()
        shutil.rmtree(self.env["BRAIN_RAY_TMP"], ignore_errors=True)
        return took


def _world_now(db: sqlite3.Connection | None) -> float | None:
    """The journal's latest world time (events: weather every world minute)."""
    if db is None:
        return None
    try:
        row = db.execute("SELECT t FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else float(row[0])


def rehearsal(label: str, tmp: Path, args, nights: int, config: Path | None = None,
              hours: float | None = None) -> dict:
    """``nights`` nights (or ``hours`` of world time) from ``args.start``."""
    cfg = load_config(config)
    t_start = parse_start(args.start)
    # to 04:30, after the last night's jobs: a restart resumes before the next night's
    # start (05:38 UTC), whose ephemerides would otherwise be computed on its loop
    span = hours * 3600 if hours else nights * DAY - 5400
    until = _iso(t_start + span)
    journal = tmp / label / "journal.sqlite"
    load = [os.getloadavg()[0]]
    ph = Phase(label, tmp, journal, args, args.start, config, until,
               math.ceil(span / DAY) + 1)
    nights_out: dict[str, dict] = {}
    db = None
    last_scrape, first_scrape, world = 0.0, {}, None
    up = None
    deadline = ph.t0 + START_TIMEOUT_S + 2.0 * span / args.speed + 300
    try:
        while ph.daemon.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            if db is None and journal.exists():
                db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
            if up is None and now - ph.t0 < START_TIMEOUT_S:  # the start: every 0.2 s
                if _devices_up(ph.metrics_port) == 60:
                    up = round(time.monotonic() - ph.t0, 2)
                time.sleep(0.2)
                continue
            w = _world_now(db)
            world = w if w is not None else world
            if world is None:
                time.sleep(0.2)
                continue
            s = ph.tree()
            n = nights_out.setdefault(night_date(cfg, world), {
                "first_world": _iso(world), "wall0": now, "cpu0": s["cpu"],
                "dcpu0": s.get("daemon_cpu", 0.0), "vcpu0": s["drivers_cpu"],
                "rss": 0, "pss": 0, "daemon_rss": 0,
                "procs": 0,
                "samples": 0, "m0": None, "m1": None, "up_min": 60})
            n.update(last_world=_iso(world), wall1=now, cpu1=s["cpu"],
                     dcpu1=s.get("daemon_cpu", n["dcpu0"]), vcpu1=s["drivers_cpu"],
                     samples=n["samples"] + 1,
                     rss=max(n["rss"], s["rss"]), pss=max(n["pss"], s["pss"]),
                     procs=max(n["procs"], s["procs"]),
                     daemon_rss=max(n["daemon_rss"], s.get("daemon_rss", 0)))
            if now - last_scrape >= 2.0:
                last_scrape = now
                m = scrape(ph.metrics_port)
                if m is not None:
                    first_scrape = first_scrape or m
                    devs = metric_sum(m, "sitian_device_up{")
                    n["m0"] = n["m0"] or m
                    n["m1"] = m
                    if up is not None:
                        n["up_min"] = min(n["up_min"], devs)
                load.append(os.getloadavg()[0])
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        finished = ph.daemon.poll() is not None
    finally:
        if db is not None:
            db.close()
        stop_s = ph.stop()
    if not finished:
        raise SoakError(f"{label}: the daemon did not reach --until {until} in time "
                        f"(log {tmp / label}.log)")
    if up is None:
        raise SoakError(f"{label}: 60 devices never up (log {tmp / label}.log)")
    per_night = [_night_summary(k, v, args.speed) for k, v in sorted(nights_out.items())]
    journal_counts(journal, cfg, per_night)
    ratios = {}
    for k in ("rss", "pss", "daemon_rss"):  # the third (last) night's peak over the first's
        v = [n[f"{k}_max_mb"] for n in per_night]
        ratios[f"{k}_night3_over_night1"] = round(v[2] / v[0], 3) if len(v) > 2 else None
        ratios[f"{k}_last_over_first"] = round(v[-1] / v[0], 3) if len(v) > 1 else None
    return {"phase": label, "until": until, "world_hours": round(span / 3600, 1),
            "wall_s": round(time.monotonic() - ph.t0, 1), "all_up_s": up,
            "loop_s": ph.marks.get("loop") and round(ph.marks["loop"], 2),
            "stop_s": stop_s, "exit_code": ph.daemon.returncode, "nights": per_night,
            **ratios,
            "load_avg": [round(min(load), 1), round(max(load), 1)],
            "journal_mb": _mb(sum(p.stat().st_size for p in journal.parent.glob("*.sqlite*"))),
            "dir": str(journal.parent)}


def _night_summary(night: str, n: dict, speed: float) -> dict:
    wall = max(n["wall1"] - n["wall0"], 1e-9)
    m0, m1 = n["m0"] or {}, n["m1"] or {}
    done = metric_sum(m1, "sitian_commands_total{", 'name="expose"', 'result="done"')
    allx = metric_sum(m1, "sitian_commands_total{", 'name="expose"')
    d0 = metric_sum(m0, "sitian_commands_total{", 'name="expose"', 'result="done"')
    a0 = metric_sum(m0, "sitian_commands_total{", 'name="expose"')
    p99, over = loop_lag(m0, m1)
    return {"night": night, "world": [n["first_world"], n["last_world"]],
            "wall_s": round(wall, 1), "samples": n["samples"],
            "rss_max_mb": _mb(n["rss"]), "pss_max_mb": _mb(n["pss"]),
            "daemon_rss_max_mb": _mb(n["daemon_rss"]),
            "procs_max": n["procs"],
            "tree_cpu_cores": round((n["cpu1"] - n["cpu0"]) / wall, 2),
            "daemon_cpu_cores": round((n["dcpu1"] - n["dcpu0"]) / wall, 2),
            "drivers_cpu_cores": round((n["vcpu1"] - n["vcpu0"]) / wall, 2),
            "exposures_done": int(done - d0),
            "exposures_not_done": int((allx - a0) - (done - d0)),
            "loop_lag_p99_s": p99, "loop_turns_over_1s": over,
            "loop_lag_p99_world_s": None if p99 is None else round(p99 * speed, 1),
            "devices_up_min": int(n["up_min"])}


def _copy_dir(src: Path, dst: Path, store: bool) -> Path:
    """A copy of a rehearsal's directory (new modification times: the restart resumes
    world time where the journal ends), without its store unless ``store``."""
    shutil.copytree(src, dst, copy_function=shutil.copy,
                    ignore=None if store else shutil.ignore_patterns("store.sqlite*"))
    return dst / "journal.sqlite"


def restart(label: str, tmp: Path, args, journal: Path | None, world_start: float,
            config: Path | None = None) -> dict:
    """``brain run`` started on ``journal`` (and its store; None: a new directory, at
    ``world_start``): seconds to the loop and to 60 devices up, then stopped."""
    load0 = os.getloadavg()[0]
    fresh = journal is None
    journal = journal or tmp / label / "journal.sqlite"
    for p in journal.parent.glob("journal.sqlite*"):  # as if it stopped just now: world
        os.utime(p)  # time resumes where the journal ends, not hours of speed x wait later
    ph = Phase(label, tmp, journal, args, _iso(world_start), config, fresh=fresh)
    try:
        out = ph.wait_up()
        s = ph.tree()
    except SoakError as exc:
        ph.stop()
        return {"phase": label, "error": str(exc), "exit_code": ph.daemon.returncode,
                "last_error": _last_error(tmp / f"{label}.log")}
    finally:
        stop_s = ph.stop()
    return {"phase": label, **out, "stop_s": stop_s, "rss_at_up_mb": _mb(s["rss"]),
            "daemon_rss_at_up_mb": _mb(s.get("daemon_rss", 0)),
            "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)]}


def _last_error(log: Path) -> str | None:
    """The last exception line of a log (``SomethingError: ...``)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines()
             if re.match(r"^\w+(Error|Exception): ", ln)]
    return lines[-1][:300] if lines else None


def season_store(args, keep: Path, end: float) -> tuple[Path, dict, float]:
    """The 30-night store, and the whole days to move the journal so that it ends
    after the store's last night."""
    if args.store_from:
        src = Path(args.store_from)
        if not src.is_file():
            raise SoakError(f"--store-from {src}: no such file")
        span = store_span(src)
        if span is None:
            raise SoakError(f"--store-from {src}: the store has no light curves")
        return src, {"from": str(src), "mjd": [round(x, 3) for x in span],
                     "bytes": src.stat().st_size}, shift_to(src, end)
    # its nights end with the journal's: one file per size and last day
    path = keep / f"synthetic-{SEASON_NIGHTS}x{args.synthetic_objects}-{_iso(end)[:10]}.sqlite"
    info = {"synthetic": True, "objects": args.synthetic_objects,
            "detections_per_night": 10 * args.synthetic_objects}
    if not path.exists():
        part = path.with_suffix(".part")
        for p in part.parent.glob(part.name + "*"):
            p.unlink()
        info.update(synthetic_store(part, SEASON_NIGHTS, end, args.synthetic_objects))
        part.rename(path)
    else:
        info["reused"] = str(path)
    info["bytes"] = path.stat().st_size
    return path, info, shift_to(path, end)


def _season_journal(src_dir: Path, dst: Path, nights: int, shift: float) -> tuple[Path, dict]:
    journal = _copy_dir(src_dir, dst, store=False)
    copies = math.ceil(SEASON_NIGHTS / nights) - 1
    rows = tile_journal(journal, shift, nights * DAY, copies)
    if shift:  # the night jobs' store (APScheduler) holds the unshifted nights' jobs
        (journal.parent / "jobs.sqlite").unlink(missing_ok=True)
    return journal, {"nights": (copies + 1) * nights, "rows": rows,
                     "mb": _mb(journal.stat().st_size)}


def sqlite_phases(args, tmp: Path, keep: Path, out: dict) -> dict:
    """The rehearsal, then the restarts: ``empty`` (a new journal and store, at the
    rehearsal's end), ``rehearsal`` (its own journal and store), ``journal30`` (its
    journal tiled to 30 nights, its store) and ``season`` (that journal and a 30-night
    store). Fills ``out``; returns the season's data."""
    out["rehearsal"] = reh = rehearsal("sqlite-rehearsal", tmp, args, args.nights,
                                       hours=args.hours)
    if args.fast:
        fast = out["fast_baseline"] = fast_baseline(args, tmp, len(reh["nights"]),
                                                    reh["until"])
        ratios = []
        for n in reh["nights"]:
            n["exposures_fast"] = fast.get("exposures", {}).get(n["night"])
            if n["exposures_fast"]:
                n["exposures_vs_fast"] = round(n["exposures_journalled"]
                                               / n["exposures_fast"], 3)
                ratios.append(n["exposures_vs_fast"])
        reh["keeps_up"] = bool(ratios) and min(ratios) >= KEEP_UP
    if args.rehearsal_only:
        return {}
    src = Path(reh["dir"])
    end = journal_end(src / "journal.sqlite")
    store, store_info, shift = season_store(args, keep, end)
    journal, jinfo = _season_journal(src, tmp / "season30", args.nights, shift)
    shutil.copy(store, journal.parent / "store.sqlite")
    set_store_meta(journal, f"sqlite:///{journal.parent / 'store.sqlite'}")
    season = {"store": store_info, "journal": jinfo, "shift_days": shift / DAY,
              "store_path": str(store), "end": end, "dir": str(src)}
    out["restarts"] = restarts = [restart("sqlite-restart-empty", tmp, args, None, end)]
    restarts.append(restart("sqlite-restart-rehearsal", tmp, args,
                            _copy_dir(src, tmp / "again", True), end))
    j30, _ = _season_journal(src, tmp / "journal30", args.nights, 0.0)
    shutil.copy(src / "store.sqlite", j30.parent / "store.sqlite")
    restarts.append(restart("sqlite-restart-journal30", tmp, args, j30, end))
    restarts.append(restart("sqlite-restart-season", tmp, args, journal, end + shift))
    return season


def postgres_phases(args, tmp: Path, season: dict) -> dict:
    try:
        server = PgServer().start()
    except PgServerError as exc:
        return {"error": str(exc).splitlines()[0]}
    out: dict = {}
    try:
        server.create_database("soak")
        if args.pg_nights:
            cfg = pg_config(tmp, "rehearsal", server.create_schema("soak", "rehearsal"))
            out["rehearsal"] = rehearsal("pg-rehearsal", tmp, args, args.pg_nights, cfg,
                                         hours=args.hours)
            src = Path(out["rehearsal"]["dir"])
            end, nights = journal_end(src / "journal.sqlite"), args.pg_nights
        else:
            src, end, nights = Path(season["dir"]), season["end"], args.nights
        cfg = pg_config(tmp, "empty", server.create_schema("soak", "empty"))
        out["restarts"] = restarts = [restart("pg-restart-empty", tmp, args, None, end, cfg)]
        if args.pg_nights:  # its own journal and store, again
            restarts.append(restart("pg-restart-rehearsal", tmp, args,
                                    _copy_dir(src, tmp / "pg-again", False), end,
                                    tmp / "config-rehearsal.yaml"))
        url = server.create_schema("soak", "season")
        since = None
        if args.pg_store_nights < SEASON_NIGHTS:
            span = store_span(Path(season["store_path"]))
            since = span[1] - args.pg_store_nights
        out["store_copy"] = copy_store(Path(season["store_path"]), url, since)
        out["store_copy"]["nights"] = min(args.pg_store_nights, SEASON_NIGHTS)
        shift = shift_to(Path(season["store_path"]), end)  # this journal's end
        journal, _ = _season_journal(src, tmp / "pg-season", nights, shift)
        set_store_meta(journal, url)
        restarts.append(restart("pg-restart-season", tmp, args, journal, end + shift,
                                pg_config(tmp, "season", url)))
    except (SoakError, OSError, sqlite3.Error, psycopg.Error, StoreError) as exc:
        out["error"] = str(exc).splitlines()[0]
    finally:
        server.stop()
    return out


def summary(out: dict) -> dict:
    """The figures the targets are about, gathered from the phases."""
    reh = out.get("sqlite", {}).get("rehearsal", {})
    ratios = [n.get("exposures_vs_fast") for n in reh.get("nights", [])]
    got = {"all_up_s": reh.get("all_up_s"),
           **{k: reh.get(k) for k in ("rss_night3_over_night1", "pss_night3_over_night1",
                                      "daemon_rss_night3_over_night1")},
           "rss_max_mb_by_night": [n["rss_max_mb"] for n in reh.get("nights", [])],
           "exposures_vs_fast_by_night": ratios, "keeps_up": reh.get("keeps_up")}
    for b in ("sqlite", "postgresql"):
        for r in out.get(b, {}).get("restarts", []):
            got[r["phase"]] = {k: r.get(k) for k in ("loop_s", "all_up_s", "error")
                               if r.get(k) is not None}
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=3, help="rehearsal nights (SQLite)")
    ap.add_argument("--speed", type=float, default=SPEED, help="world clock speed")
    ap.add_argument("--start", default=START, help="world start, ISO UTC")
    ap.add_argument("--hours", type=float, default=None,
                    help="world hours of each rehearsal instead of whole nights (smoke runs)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--store-from", help="a 30-night store.sqlite (brain simulate --nights "
                                         "30); default: a synthetic one")
    ap.add_argument("--synthetic-objects", type=int, default=150_000,
                    help="objects of the synthetic store (10 detections each a night)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-nights", type=int, default=1,
                    help="nights of the PostgreSQL rehearsal (0: restarts only)")
    ap.add_argument("--pg-store-nights", type=int, default=SEASON_NIGHTS,
                    help="nights of light curves copied into PostgreSQL")
    ap.add_argument("--no-fast", dest="fast", action="store_false",
                    help="no fast-shell baseline (brain simulate) of the nights' exposures")
    ap.add_argument("--rehearsal-only", action="store_true",
                    help="the SQLite rehearsal only (finding the speed)")
    ap.add_argument("--keep", help="keep the runs' files (and the synthetic store) here")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if "sqlite" not in backends or set(backends) - {"sqlite", "postgresql"}:
        ap.exit(2, "bench_soak: error: --backends: sqlite, optionally with postgresql\n")
    if args.nights < 1 or args.speed <= 0:
        ap.exit(2, "bench_soak: error: --nights must be >= 1 and --speed > 0\n")
    signal.signal(signal.SIGTERM, _stopped)  # the phases stop their daemons and drivers
    keep = Path(args.keep) if args.keep else None
    tmp = Path(tempfile.mkdtemp(prefix="soak-", dir=keep))
    t0 = time.monotonic()
    out = RESULTS
    out.update({"bench": "soak", "cpus": os.cpu_count(), "speed": args.speed,
                "start": args.start, "nights": args.nights, "hours": args.hours,
                "hosting": "ray", "targets": TARGETS, "logs": str(tmp)})
    try:
        out["sqlite"] = {}
        season = sqlite_phases(args, tmp, keep or tmp, out["sqlite"])
        if season:
            out["season"] = {k: season[k] for k in ("store", "journal", "shift_days")}
        if season and "postgresql" in backends:
            out["postgresql"] = postgres_phases(args, tmp, season)
    except (SoakError, Stopped, OSError, sqlite3.Error) as exc:
        out["error"] = str(exc).splitlines()[0]
    out["summary"] = summary(out)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out), flush=True)
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    if "error" in out:
        print(f"bench_soak: error: {out['error']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
