"""The daemon's crash-safe journal: one SQLite file in WAL mode.

Write-ahead discipline (docs/architecture.md step 9): every command is written (status
``sent``) and committed before it goes on the wire; every event from a device is written
before the core acts on it. WAL with ``synchronous=NORMAL`` survives a killed process
(kill -9) without losing a committed row; only a power loss can cost the last
transactions. On restart, :meth:`Journal.recover` marks every command still in flight:
idempotent ones ``lost`` (they may be sent again), non-idempotent ones ``unknown`` —
never resent blindly (docs/protocol.md).
"""

from __future__ import annotations

import io
import json
import math
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np

from observatory.records import OBS_COLUMNS

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (session TEXT PRIMARY KEY, started_wall REAL NOT NULL,
    started_world REAL NOT NULL, run_wall_s REAL);
CREATE TABLE IF NOT EXISTS commands (
    cmd_id TEXT PRIMARY KEY, session TEXT NOT NULL, device TEXT NOT NULL,
    name TEXT NOT NULL, args TEXT NOT NULL, idempotent INTEGER NOT NULL,
    t_sent REAL NOT NULL, deadline REAL NOT NULL,
    status TEXT NOT NULL,            -- sent, done, failed, timeout, unknown, lost, refused
    code TEXT, message TEXT, result TEXT, t_end REAL);
CREATE INDEX IF NOT EXISTS commands_status ON commands(status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, device TEXT NOT NULL,
    name TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS observations (
    obs_id TEXT PRIMARY KEY, telescope TEXT, site TEXT, grp INTEGER, band TEXT,
    field_id INTEGER, ra_deg REAL, dec_deg REAL, t_start REAL, t_end REAL, alt_deg REAL,
    airmass REAL, moon_sep_deg REAL, sun_alt_deg REAL, limiting_mag REAL);
CREATE TABLE IF NOT EXISTS visits (
    field_id INTEGER NOT NULL, group_index INTEGER NOT NULL, t_start REAL NOT NULL);
CREATE TABLE IF NOT EXISTS detections (
    obs_id TEXT NOT NULL, part INTEGER NOT NULL, t REAL NOT NULL, arrays BLOB NOT NULL,
    PRIMARY KEY (obs_id, part));
CREATE INDEX IF NOT EXISTS visits_t ON visits (t_start);
CREATE TABLE IF NOT EXISTS followups (
    cmd_id TEXT PRIMARY KEY, target_id TEXT, device TEXT, t_start REAL, t_end REAL,
    label TEXT, snr REAL, status TEXT);
CREATE TABLE IF NOT EXISTS night_jobs (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, night TEXT NOT NULL, site TEXT,
    world_t REAL NOT NULL, status TEXT NOT NULL,  -- started, done, skipped, missed, failed
    t REAL NOT NULL, detail TEXT NOT NULL);
"""


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # When an earlier process last wrote it (its files' modification time), for a
        # rehearsal that resumes its world clock; None for a new journal.
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        self.last_write_wall = max((p.stat().st_mtime for p in files if p.exists()),
                                   default=None)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(sessions)")}
        if "run_wall_s" not in cols:  # a journal written before the column
            self.db.execute("ALTER TABLE sessions ADD COLUMN run_wall_s REAL")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self):
        """One transaction for everything written inside: committed on leaving, rolled
        back on an exception (SQLite refuses to nest them)."""
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # Sessions --------------------------------------------------------------------
    def start_session(self, session: str, world_t: float) -> dict[str, int]:
        """Begin a daemon session; returns what recovery found (status -> count)."""
        found = self.recover()
        self.db.execute("INSERT INTO sessions (session, started_wall, started_world) "
                        "VALUES (?, ?, ?)", (session, time.time(), world_t))
        return found

    def session_loop_started(self, session: str, world_t: float) -> None:
        """The world time the session's loop began (a rehearsal's clock is set then)."""
        self.db.execute("UPDATE sessions SET started_world=? WHERE session=?",
                        (world_t, session))

    def end_session(self, session: str, run_wall_s: float) -> None:
        """How long the session's loop ran, in wall seconds."""
        self.db.execute("UPDATE sessions SET run_wall_s=? WHERE session=?",
                        (run_wall_s, session))

    def recover(self) -> dict[str, int]:
        """Commands left in flight by a previous process: idempotent ones are ``lost``,
        the others ``unknown``."""
        with self.db:
            n_lost = self.db.execute(
                "UPDATE commands SET status='lost', message='in flight when the daemon "
                "stopped' WHERE status='sent' AND idempotent=1").rowcount
            n_unknown = self.db.execute(
                "UPDATE commands SET status='unknown', message='in flight when the daemon "
                "stopped; outcome unknown, never resent' WHERE status='sent' "
                "AND idempotent=0").rowcount
        return {"lost": n_lost, "unknown": n_unknown}

    # Commands --------------------------------------------------------------------
    def command(self, session: str, cmd, t: float) -> None:
        self.db.execute("INSERT INTO commands (cmd_id, session, device, name, args, idempotent,"
                        " t_sent, deadline, status) VALUES (?,?,?,?,?,?,?,?, 'sent')",
                        (cmd.cmd_id, session, cmd.device, cmd.name, json.dumps(cmd.args),
                         int(cmd.idempotent), t, cmd.deadline))

    def refused(self, session: str, cmd, t: float, rule: str) -> None:
        self.db.execute("INSERT INTO commands (cmd_id, session, device, name, args, idempotent,"
                        " t_sent, deadline, status, code, message) VALUES "
                        "(?,?,?,?,?,?,?,?, 'refused', 'unsafe', ?)",
                        (cmd.cmd_id, session, cmd.device, cmd.name, json.dumps(cmd.args),
                         int(cmd.idempotent), t, cmd.deadline, rule))

    def finish(self, cmd_id: str, status: str, t: float, result: dict | None = None,
               code: str | None = None, message: str | None = None) -> None:
        self.db.execute("UPDATE commands SET status=?, t_end=?, result=?, code=?, message=? "
                        "WHERE cmd_id=? AND status='sent'",
                        (status, t, json.dumps(result) if result is not None else None, code,
                         message, cmd_id))

    def reconcile(self, cmd_id: str, ok: bool, t: float, body: dict) -> dict | None:
        """A reply for a command whose outcome was unknown (in flight across a restart or
        a lost link): record it. Returns the command's row when it changed, else None."""
        row = self.command_row(cmd_id)
        if row is None or row["status"] not in ("unknown", "lost", "timeout"):
            return None
        self.db.execute("UPDATE commands SET status=?, t_end=?, result=?, code=?, message=? "
                        "WHERE cmd_id=?",
                        ("done" if ok else "failed", t,
                         json.dumps(body.get("result")) if ok else None,
                         None if ok else body.get("code"),
                         "outcome recovered after the link returned", cmd_id))
        return row

    def command_row(self, cmd_id: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM commands WHERE cmd_id=?", (cmd_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cur.description], row, strict=True))

    def last_world_time(self) -> float | None:
        """The latest world time anything in the journal carries (None when empty)."""
        row = self.db.execute(
            "SELECT MAX(t) FROM (SELECT MAX(t_sent) AS t FROM commands UNION ALL "
            "SELECT MAX(t_end) FROM commands UNION ALL SELECT MAX(t) FROM events)").fetchone()
        return None if row[0] is None else float(row[0])

    def max_obs_seq(self) -> int:
        """Highest exposure sequence number used so far (obs ids end in it)."""
        row = self.db.execute("SELECT MAX(CAST(substr(json_extract(args, '$.obs_id'), -7) "
                              "AS INTEGER)) FROM commands WHERE name='expose'").fetchone()
        return int(row[0] or 0)

    # Events and products ---------------------------------------------------------
    def event(self, t: float, device: str, name: str, data: dict) -> None:
        self.db.execute("INSERT INTO events (t, device, name, data) VALUES (?,?,?,?)",
                        (t, device, name, json.dumps(data)))

    def operator_actions(self) -> list[tuple[float, str, dict]]:
        """Approved operator actions, oldest first (refusals left out)."""
        rows = self.db.execute("SELECT t, name, data FROM events WHERE device = 'operator' "
                               "AND name != 'refused' ORDER BY rowid").fetchall()
        return [(float(t), name, json.loads(data)) for t, name, data in rows]

    def observation(self, row: tuple) -> None:
        self.db.execute(f"INSERT OR IGNORE INTO observations VALUES "
                        f"({','.join('?' * len(OBS_COLUMNS))})", row)

    def visit(self, field_id: int, group: int, t_start: float) -> None:
        self.db.execute("INSERT INTO visits VALUES (?,?,?)", (field_id, group, t_start))

    def detections(self, obs_id: str, part: int, t: float, arrays: dict[str, np.ndarray]
                   ) -> bool:
        """Store one detections message; False if it was already stored (a resend)."""
        cur = self.db.execute("INSERT OR IGNORE INTO detections VALUES (?,?,?,?)",
                              (obs_id, part, t, pack_arrays(arrays)))
        return cur.rowcount == 1

    def followup(self, cmd_id: str, target_id: str, device: str, status: str,
                 result: dict | None) -> None:
        r = result or {}
        self.db.execute("INSERT OR REPLACE INTO followups VALUES (?,?,?,?,?,?,?,?)",
                        (cmd_id, target_id, device, r.get("t_start"), r.get("t_end"),
                         r.get("label"), r.get("snr"), status))

    # Night jobs (brain.ops.nightjobs) ------------------------------------------------------
    def job(self, due, status: str, t: float, detail: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO night_jobs VALUES (?,?,?,?,?,?,?,?)",
                        (due.job_id, due.kind, due.night, due.site, due.world_t, status, t,
                         json.dumps(detail)))

    def job_status(self, job_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM night_jobs WHERE job_id=?",
                              (job_id,)).fetchone()
        return row[0] if row else None

    def jobs_recorded(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT job_id FROM night_jobs")}

    def jobs_with_status(self, status: str) -> list[tuple]:
        return [tuple(r) for r in self.db.execute(
            "SELECT job_id, kind, night, site, world_t FROM night_jobs WHERE status=? "
            "ORDER BY world_t", (status,))]

    def night_jobs(self) -> list[dict]:
        cols = ("job_id", "kind", "night", "site", "world_t", "status", "t", "detail")
        return [dict(zip(cols, r, strict=True)) for r in self.db.execute(
            "SELECT * FROM night_jobs ORDER BY world_t, job_id")]

    def night_counts(self, site: str, t0: float, t1: float) -> dict[str, int]:
        """A site's exposures, three-band visits and spectra in [t0, t1) (world time)."""
        q = self.db.execute
        exposures = q("SELECT COUNT(*) FROM observations WHERE site=? AND t_start>=? AND "
                      "t_start<?", (site, t0, t1)).fetchone()[0]
        visits = q("SELECT COUNT(*) FROM (SELECT DISTINCT grp, t_start FROM observations "
                   "WHERE site=? AND t_start>=? AND t_start<? GROUP BY grp, t_start "
                   "HAVING COUNT(DISTINCT band)>=3)", (site, t0, t1)).fetchone()[0]
        spectra = q("SELECT COUNT(*) FROM commands WHERE name='spectrum' AND status='done' "
                    "AND device=? AND t_sent>=? AND t_sent<?",
                    (f"{site}.spec", t0, t1)).fetchone()[0]
        return {"exposures": int(exposures), "visits": int(visits), "spectra": int(spectra)}

    # Reading back ----------------------------------------------------------------
    def observations(self, t0: float = -math.inf, t1: float = math.inf) -> list[tuple]:
        """Observations whose shutter opened in [t0, t1) (world time), in time order."""
        return [tuple(r) for r in self.db.execute(
            "SELECT * FROM observations WHERE t_start>=? AND t_start<? "
            "ORDER BY t_start, obs_id", (t0, t1))]

    def visits(self, since: float = -math.inf) -> list[tuple[int, int, float]]:
        return [tuple(r) for r in self.db.execute(
            "SELECT * FROM visits WHERE t_start >= ? ORDER BY t_start",
            (max(since, -1e300),))]

    def spectra(self, t0: float = -math.inf, t1: float = math.inf) -> list[dict]:
        """Every spectrum commanded in [t0, t1), oldest first: device, target_id, ra_deg,
        dec_deg, t_sent, t_end, status, label, and the device's whole result."""
        out = []
        for device, args, status, t_sent, t_end, result in self.db.execute(
                "SELECT device, args, status, t_sent, t_end, result FROM commands "
                "WHERE name='spectrum' AND t_sent>=? AND t_sent<? ORDER BY t_sent, rowid",
                (t0, t1)):
            a, r = json.loads(args), json.loads(result or "{}") or {}
            out.append({"device": device, "target_id": a.get("target_id", ""),
                        "ra_deg": float(a.get("ra_deg", np.nan)),
                        "dec_deg": float(a.get("dec_deg", np.nan)), "t_sent": t_sent,
                        "t_end": t_end, "status": status, "label": r.get("label"),
                        "result": r})
        return out

    def events_named(self, name: str, t0: float, t1: float) -> list[tuple[float, str, dict]]:
        """Journalled device events of one name in [t0, t1): (t, device, data)."""
        return [(t, d, json.loads(data)) for t, d, data in self.db.execute(
            "SELECT t, device, data FROM events WHERE name=? AND t>=? AND t<? ORDER BY t, seq",
            (name, t0, t1))]

    def iter_detections(self, after: int = -1):
        """Journalled detection messages after row ``after`` (:meth:`last_detection`;
        those up to it are in the object store: a restart reads only the others)."""
        for obs_id, part, t, blob in self.db.execute(
                "SELECT obs_id, part, t, arrays FROM detections WHERE rowid > ? "
                "ORDER BY t, obs_id, part", (int(after),)):
            yield obs_id, part, t, unpack_arrays(blob)

    def last_detection(self) -> int:
        """The row of the latest detection message (-1: none)."""
        r = self.db.execute("SELECT MAX(rowid) FROM detections").fetchone()[0]
        return -1 if r is None else int(r)

    def prune_detections(self, upto: int) -> int:
        """Drop detection messages up to row ``upto`` (the object store has them) and
        checkpoint the write-ahead log: the journal stays the size of a night."""
        n = self.db.execute("DELETE FROM detections WHERE rowid <= ?", (int(upto),)).rowcount
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """1-D arrays as msgpack ``{name: [dtype, bytes]}``, little-endian (13 µs for a
    500-source message against ``np.savez``'s 115 µs: the daemon's hot path)."""
    out = {}
    for k, a in arrays.items():
        dt = np.asarray(a).dtype.newbyteorder("<")
        out[k] = [dt.str, np.ascontiguousarray(a, dtype=dt).tobytes()]
    return msgpack.packb(out)


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    if blob[:2] == b"PK":  # written by np.savez (journals from before pack_arrays)
        with np.load(io.BytesIO(blob)) as z:
            return {k: z[k] for k in z.files}
    return {k: np.frombuffer(b, dtype=np.dtype(dt)).copy()
            for k, (dt, b) in msgpack.unpackb(blob).items()}
