"""The object store: every object's light curve and the catalogue, on disk (docs/store.md).

Two tables. ``light_curves`` holds detections, one row per object and flush (the
detections an object gained since the last flush, packed and compressed: exact
float64 times, int8 bands, float32 magnitudes and errors). ``objects`` is the
catalogue: one row per object with its position, first and last time seen, counts,
class probabilities and the per-band summary of its history that tells whether it has
changed. The brain keeps the catalogue of the objects it knows and the last few nights
of detections in memory (brain/core/association.py); everything else is read from here.

Embedded SQLite (``sqlite:///PATH``) is the default; ``postgresql://...`` runs the same
schema on a PostgreSQL server (psycopg 3). Both speak the same SQL but for placeholders,
the binary type and how a list of ids is passed.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import zlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from observatory.taxonomy import CLASSES

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
N_BANDS = 3
# Per band: detections, sum and sum of squares of magnitudes, brightest, faintest.
HIST_FIELDS = ("n", "sum", "sumsq", "min", "max")
LC_DTYPE = np.dtype([("mjd", "<f8"), ("band", "i1"), ("mag", "<f4"), ("err", "<f4")])
CATALOGUE_DTYPE = np.dtype([
    ("object_id", "<i8"), ("ra_deg", "<f8"), ("dec_deg", "<f8"),
    ("first_mjd", "<f8"), ("last_mjd", "<f8"), ("n_det", "<i4"), ("n_nights", "<i4"),
    ("last_night", "<f8"),  # MJD at the start of the last night the object was seen
    ("truth", "<i8"),  # the simulator's source (-1: bogus or real sky)
    ("classified_ndet", "<i4"),  # detections when last classified (0: never)
    ("classified_mjd", "<f8"),  # last seen when last classified
    ("prob", "<f4", (len(CLASSES),)),
    ("hist", "<f8", (N_BANDS, len(HIST_FIELDS))),  # of the nights closed so far
    # The survey reference's magnitude at the object per band, as its detections last
    # reported it (+inf: nothing there; NaN: never reported). docs/protocol.md, ref_mag.
    ("ref", "<f4", (N_BANDS,)),
    # In memory only (not in the store): the largest departure of the object's
    # detections from that reference, |mag - ref| - 3 errors (+inf: a detection where the
    # reference has nothing; NaN: none compared). Association.reference_departure.
    ("ref_dev", "<f4"),
])
_OBJECT_COLS = ("object_id", "ra_deg", "dec_deg", "first_mjd", "last_mjd", "n_det",
                "n_nights", "last_night", "truth", "classified_ndet", "classified_mjd",
                "prob", "hist", "ref")
_N_SCALAR = len(_OBJECT_COLS) - 3


class StoreError(RuntimeError):
    """The store cannot be opened or used (one line, for the operator)."""


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:  # not a URL we can take apart: say nothing of it
        return url.partition("://")[0] + "://..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def empty_catalogue(n: int = 0) -> np.ndarray:
    cat = np.zeros(n, dtype=CATALOGUE_DTYPE)
    cat["truth"] = -1
    cat["hist"][..., 3] = np.inf
    cat["hist"][..., 4] = -np.inf
    cat["ref"] = np.nan
    cat["ref_dev"] = np.nan
    return cat


# The store keeps photometry at the precision surveys publish it: times to 1e-8 day
# (0.86 ms), magnitudes to 1 mmag, errors to 0.1 mmag (at most 6.5535). The brain rounds
# detections the same way when they arrive (:func:`quantize`), so what it holds in memory
# and what a restart reads back are the same numbers, bit for bit.
MJD_UNIT, MAG_UNIT, ERR_UNIT = 1e-8, 1e-3, 1e-4
# The nights before the memory window: one row per object and span of 4 days (MJD // 4).
# Longer spans save a little more row overhead but rewrite more each night.
SPAN_DAYS = 4


def quantize(mjd, mag, err):
    """Detections as the store keeps them: (mjd float64, mag float32, err float32)."""
    t = np.round(np.asarray(mjd, dtype=np.float64) / MJD_UNIT) * MJD_UNIT
    m = (np.round(np.asarray(mag, dtype=np.float64) / MAG_UNIT) * MAG_UNIT).astype(np.float32)
    e = (np.round(np.clip(np.asarray(err, dtype=np.float64), 0, 6.5535) / ERR_UNIT)
         * ERR_UNIT).astype(np.float32)
    return t, m, e


def pack(mjd, band, mag, err) -> bytes:
    """zlib of, little-endian, column after column: the first time (int64, units of
    1e-8 day), the n - 1 steps to the next (uint32), bands (int8), magnitudes (int16,
    mmag) and errors (uint16, 0.1 mmag). Times in non-decreasing order."""
    return pack_many(np.array([0]), mjd, band, mag, err)[0]


def _layout(n: np.ndarray):
    """Where each row's columns start in the rows' raw bytes laid end to end (rows of
    ``n`` detections): (row start, per detection: its row, its index in the row)."""
    size = 9 * n + 4  # 8 + 4 (n - 1) + n + 2 n + 2 n
    base = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    row = np.repeat(np.arange(n.size), n)
    first = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    j = np.arange(int(n.sum()), dtype=np.int64) - first[row]
    return base, size, row, j


def _at(base_of_each: np.ndarray, width: int) -> np.ndarray:
    return (base_of_each[:, None] + np.arange(width)).ravel()


def pack_many(starts, mjd, band, mag, err) -> list[bytes]:
    """:func:`pack` of each row: detections ``[starts[k], starts[k + 1])`` (the last to
    the end), vectorised (a night's rows are packed at once)."""
    ti = np.round(np.asarray(mjd, dtype=np.float64) / MJD_UNIT).astype(np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    n = np.diff(np.r_[starts, ti.size]).astype(np.int64)
    if ti.size == 0:
        return [zlib.compress(b"", 6)] * starts.size
    base, size, row, j = _layout(n)
    steps = np.diff(ti)
    inner = j > 0
    steps = steps[inner[1:]]
    if steps.size and (steps.min() < 0 or steps.max() >= 2**32):
        raise ValueError("a light-curve row must be in time order and span < 42 days")
    mi = np.round(np.asarray(mag, dtype=np.float64) / MAG_UNIT).astype("<i2")
    ei = np.round(np.clip(np.asarray(err, dtype=np.float64), 0, 6.5535) / ERR_UNIT
                  ).astype("<u2")
    raw = np.empty(int(size.sum()), dtype=np.uint8)
    raw[_at(base, 8)] = ti[starts].astype("<i8").view(np.uint8)
    nb = n[row]  # each detection's row length
    col = base[row] + 8 + 4 * (nb - 1)  # where the bands start
    raw[_at(base[row[inner]] + 8 + 4 * (j[inner] - 1), 4)] = steps.astype("<u4").view(
        np.uint8)
    raw[col + j] = np.asarray(band, dtype="i1").view(np.uint8)
    raw[_at(col + nb + 2 * j, 2)] = mi.view(np.uint8)
    raw[_at(col + 3 * nb + 2 * j, 2)] = ei.view(np.uint8)
    view = memoryview(raw)
    return [zlib.compress(view[b:b + z], 6) for b, z in zip(base.tolist(), size.tolist(),
                                                             strict=True)]


def unpack(blob: bytes) -> np.ndarray:
    return unpack_many([blob])[1]


def unpack_many(blobs) -> tuple[np.ndarray, np.ndarray]:
    """The rows of :func:`pack`, unpacked at once: (detections per row, the detections
    of all rows end to end, each row in time order)."""
    raws = [zlib.decompress(b) for b in blobs]
    size = np.array([len(r) for r in raws], dtype=np.int64)
    n = np.maximum(size - 4, 0) // 9  # an empty row is 0 bytes
    out = np.empty(int(n.sum()), dtype=LC_DTYPE)
    if out.size == 0:
        return n, out
    raw = np.frombuffer(b"".join(raws), dtype=np.uint8)
    base, _size, row, j = _layout(n)
    t0 = raw[_at(base[n > 0], 8)].view("<i8")
    nb = n[row]
    col = base[row] + 8 + 4 * (nb - 1)
    inner = j > 0
    step = np.zeros(out.size, dtype=np.int64)
    step[inner] = raw[_at(base[row[inner]] + 8 + 4 * (j[inner] - 1), 4)].view("<u4")
    cum = np.cumsum(step)
    t0_of = np.zeros(n.size, dtype=np.int64)
    t0_of[n > 0] = t0
    k = np.arange(out.size)
    out["mjd"] = (t0_of[row] + cum - cum[k - j]) * MJD_UNIT  # k - j: the row's first
    out["band"] = raw[col + j].view("i1")
    out["mag"] = (raw[_at(col + nb + 2 * j, 2)].view("<i2").astype(np.float64) * MAG_UNIT
                  ).astype(np.float32)
    out["err"] = (raw[_at(col + 3 * nb + 2 * j, 2)].view("<u2").astype(np.float64)
                  * ERR_UNIT).astype(np.float32)
    return n, out


class ObjectStore:
    """The shared part of both backends; see :func:`open_store`."""

    binary = "BLOB"
    double = "DOUBLE PRECISION"
    mark = "?"
    _errors: tuple[type[BaseException], ...] = ()  # the backend's own errors

    def __init__(self, url: str):
        self.url = url
        # What was read, for the operator (and for tests: restart reads little).
        self.reads = {"objects": 0, "light_curve_rows": 0, "detections": 0}
        try:
            self._create()
        except StoreError:
            self._abandon()
            raise
        except self._errors as exc:  # e.g. another program's tables of the same names
            self._abandon()
            raise StoreError(f"{safe_url(url)}: not an object store this brain can use: "
                             f"{_first_line(exc)}") from None

    def _abandon(self) -> None:
        """Close the connection of a store that could not be opened."""
        with contextlib.suppress(Exception):
            self.db.rollback()
        with contextlib.suppress(Exception):
            self.db.close()

    # Backend hooks --------------------------------------------------------------------
    def _execute(self, sql: str, params=()):
        raise NotImplementedError

    def _executemany(self, sql: str, rows) -> None:
        raise NotImplementedError

    def _query(self, sql: str, params=()) -> list[tuple]:
        raise NotImplementedError

    def _ids_clause(self, ids: np.ndarray) -> tuple[str, tuple]:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def checkpoint(self) -> None:
        """After a night's writes: the write-ahead log back to nothing (SQLite)."""
        self.commit()

    def close(self) -> None:
        raise NotImplementedError

    # Schema ---------------------------------------------------------------------------
    def _create(self) -> None:
        b, d = self.binary, self.double
        self._execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, "
                      "value TEXT NOT NULL)")
        self._execute(f"""CREATE TABLE IF NOT EXISTS objects (
            object_id BIGINT PRIMARY KEY, ra_deg {d} NOT NULL, dec_deg {d} NOT NULL,
            first_mjd {d} NOT NULL, last_mjd {d} NOT NULL, n_det INTEGER NOT NULL,
            n_nights INTEGER NOT NULL, last_night {d} NOT NULL, truth BIGINT NOT NULL,
            classified_ndet INTEGER NOT NULL, classified_mjd {d} NOT NULL,
            prob {b} NOT NULL, hist {b} NOT NULL, ref {b})""")
        self._execute("CREATE INDEX IF NOT EXISTS objects_last ON objects (last_mjd)")
        self._execute(f"""CREATE TABLE IF NOT EXISTS light_curves (
            object_id BIGINT NOT NULL, mjd_first {d} NOT NULL, mjd_last {d} NOT NULL,
            n INTEGER NOT NULL, data {b} NOT NULL)""")
        self._execute("CREATE INDEX IF NOT EXISTS light_curves_object "
                      "ON light_curves (object_id, mjd_first)")
        m = self.mark
        rows = self._query(f"SELECT value FROM store_meta WHERE key = {m}", ("schema",))
        if rows and str(rows[0][0]).strip() == "2":
            self._migrate_2_to_3()
            rows = [(str(SCHEMA_VERSION),)]
        # Tables of those names made by something else have other columns: refused here.
        self._query(f"SELECT {', '.join(_OBJECT_COLS)} FROM objects WHERE 1 = 0")
        self._query("SELECT object_id, mjd_first, mjd_last, n, data FROM light_curves "
                    "WHERE 1 = 0")
        if not rows:
            self._execute(f"INSERT INTO store_meta (key, value) VALUES ({m}, {m})",
                          ("schema", str(SCHEMA_VERSION)))
            self._execute(f"INSERT INTO store_meta (key, value) VALUES ({m}, {m})",
                          ("classes", ",".join(CLASSES)))
        elif str(rows[0][0]).strip() != str(SCHEMA_VERSION):
            raise StoreError(f"{safe_url(self.url)}: schema version {rows[0][0]}, this "
                             f"brain reads {SCHEMA_VERSION} (docs/store.md: migrating)")
        self.commit()

    def _migrate_2_to_3(self) -> None:
        """Schema 2 -> 3: the objects gain the reference's magnitudes (``ref``, NULL for
        the rows written before: unknown). One transaction; nothing else changes."""
        self._execute(f"ALTER TABLE objects ADD COLUMN ref {self.binary}")
        self._execute(f"UPDATE store_meta SET value = {self.mark} WHERE key = {self.mark}",
                      ("3", "schema"))
        self.commit()
        log.warning("%s: store migrated from schema 2 to 3 (objects.ref added)",
                    safe_url(self.url))

    # Writing --------------------------------------------------------------------------
    def write_detections(self, obj_ids, mjd, band, mag, err) -> int:
        """One row per object of the detections given (any order). Returns rows written."""
        obj_ids = np.asarray(obj_ids, dtype=np.int64)
        if obj_ids.size == 0:
            return 0
        order = np.lexsort((mjd, obj_ids))
        o, t = obj_ids[order], np.asarray(mjd, dtype=np.float64)[order]
        b, g, e = (np.asarray(band)[order], np.asarray(mag)[order], np.asarray(err)[order])
        starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
        ends = np.r_[starts[1:], o.size]
        blobs = pack_many(starts, t, b, g, e)
        rows = list(zip(o[starts].tolist(), t[starts].tolist(), t[ends - 1].tolist(),
                        (ends - starts).tolist(), blobs, strict=True))
        m = self.mark
        self._executemany("INSERT INTO light_curves (object_id, mjd_first, mjd_last, n, data) "
                          f"VALUES ({m}, {m}, {m}, {m}, {m})", rows)
        return len(rows)

    def rewrite_night(self, since_mjd: float, obj_ids, mjd, band, mag, err) -> int:
        """Replace the rows of a night (every row with ``mjd_first >= since_mjd``) by one
        row per object of the detections given, in one transaction with the caller's
        commit: the night's flushes, which are small, become one row each (docs/store.md:
        a night's rows). Returns rows written."""
        self._execute(f"DELETE FROM light_curves WHERE mjd_first >= {self.mark}",
                      (float(since_mjd),))
        return self.write_detections(obj_ids, mjd, band, mag, err)

    def compact_spans(self, since_mjd: float, before_mjd: float) -> int:
        """Rows that start before ``before_mjd`` (nights no brain holds in memory any
        more) become one row per object and span (MJD // ``SPAN_DAYS``), for the spans
        from the one of ``since_mjd`` (the previous call's ``before_mjd``; -inf: the
        last ``SPAN_DAYS`` before ``before_mjd``). Returns rows written. A span's row
        covers under 4 days, well inside what a row may (42 days)."""
        if not np.isfinite(before_mjd):
            return 0
        lo = before_mjd - SPAN_DAYS if not np.isfinite(since_mjd) else since_mjd
        written = 0
        for span in range(int(lo // SPAN_DAYS), int(before_mjd // SPAN_DAYS) + 1):
            a, b = span * SPAN_DAYS, min((span + 1) * SPAN_DAYS, before_mjd)
            m = self.mark
            where = f"WHERE mjd_first >= {m} AND mjd_first < {m}"
            n_rows, n_obj = self._query("SELECT COUNT(*), COUNT(DISTINCT object_id) FROM "
                                        f"light_curves {where}", (a, b))[0]
            if n_rows == n_obj:
                continue  # one row per object already: nothing read
            rows = self._query(f"SELECT object_id, data FROM light_curves {where}", (a, b))
            obj, mjd, band, mag, err = self._flatten(rows, count=False)
            self._execute(f"DELETE FROM light_curves {where}", (a, b))
            written += self.write_detections(obj, mjd, band, mag, err)
        return written

    def write_objects(self, cat: np.ndarray) -> None:
        """Insert or replace the catalogue rows given."""
        if cat.size == 0:
            return
        m = ", ".join([self.mark] * len(_OBJECT_COLS))
        sets = ", ".join(f"{c} = excluded.{c}" for c in _OBJECT_COLS[1:])
        rows = [(int(r["object_id"]), float(r["ra_deg"]), float(r["dec_deg"]),
                 float(r["first_mjd"]), float(r["last_mjd"]), int(r["n_det"]),
                 int(r["n_nights"]), float(r["last_night"]), int(r["truth"]),
                 int(r["classified_ndet"]), float(r["classified_mjd"]),
                 zlib.compress(r["prob"].astype("<f4").tobytes(), 1),
                 zlib.compress(r["hist"].astype("<f8").tobytes(), 1),
                 r["ref"].astype("<f4").tobytes()) for r in cat]
        self._executemany(f"INSERT INTO objects ({', '.join(_OBJECT_COLS)}) VALUES ({m}) "
                          f"ON CONFLICT (object_id) DO UPDATE SET {sets}", rows)

    # Reading --------------------------------------------------------------------------
    def _catalogue(self, rows: list[tuple]) -> np.ndarray:
        cat = empty_catalogue(len(rows))
        for k, r in enumerate(rows):
            for c, v in zip(_OBJECT_COLS[:_N_SCALAR], r[:_N_SCALAR], strict=True):
                cat[c][k] = v
            cat["prob"][k] = np.frombuffer(zlib.decompress(bytes(r[_N_SCALAR])), dtype="<f4")
            cat["hist"][k] = np.frombuffer(zlib.decompress(bytes(r[_N_SCALAR + 1])),
                                           dtype="<f8").reshape(N_BANDS, -1)
            if r[_N_SCALAR + 2] is not None:  # NULL: written before schema 3 (unknown)
                cat["ref"][k] = np.frombuffer(bytes(r[_N_SCALAR + 2]), dtype="<f4")
        self.reads["objects"] += len(rows)
        return cat

    def objects(self, ids=None) -> np.ndarray:
        """Catalogue rows (all, or of ``ids``), by object id."""
        cols = ", ".join(_OBJECT_COLS)
        if ids is None:
            rows = self._query(f"SELECT {cols} FROM objects ORDER BY object_id")
        else:
            ids = np.unique(np.asarray(ids, dtype=np.int64))
            if ids.size == 0:
                return empty_catalogue()
            clause, params = self._ids_clause(ids)
            rows = self._query(f"SELECT {cols} FROM objects WHERE {clause} "
                               "ORDER BY object_id", params)
        return self._catalogue(rows)

    def known(self, min_detections: int, seen_since_mjd: float) -> np.ndarray:
        """The catalogue a restarted brain keeps in memory: objects with at least
        ``min_detections``, and the others seen since ``seen_since_mjd``."""
        m = self.mark
        rows = self._query(f"SELECT {', '.join(_OBJECT_COLS)} FROM objects WHERE n_det >= {m} "
                           f"OR last_mjd >= {m} ORDER BY object_id",
                           (int(min_detections), float(seen_since_mjd)))
        return self._catalogue(rows)

    def light_curves(self, ids, since_mjd: float = -np.inf, before_mjd: float = np.inf):
        """Detections of objects ``ids`` with ``since_mjd <= mjd < before_mjd`` (rows
        are whole flushes: a flush never spans two nights), as flat arrays sorted by
        object then time: (object, mjd, band, mag, mag_err)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if ids.size == 0:
            return _empty_lc()
        clause, params = self._ids_clause(ids)
        m = self.mark
        lo = -1e300 if not np.isfinite(since_mjd) else float(since_mjd)
        hi = 1e300 if not np.isfinite(before_mjd) else float(before_mjd)
        rows = self._query(f"SELECT object_id, data FROM light_curves WHERE {clause} "
                           f"AND mjd_first >= {m} AND mjd_first < {m}",
                           (*params, lo, hi))
        return self._flatten(rows)

    def detections_since(self, since_mjd: float):
        """Every detection with ``mjd >= since_mjd`` (a restart's active window)."""
        rows = self._query(f"SELECT object_id, data FROM light_curves WHERE mjd_first >= "
                           f"{self.mark}", (float(since_mjd),))
        return self._flatten(rows)

    def _flatten(self, rows, count: bool = True):
        if count:  # what the brain read (compaction's own reads are not)
            self.reads["light_curve_rows"] += len(rows)
        if not rows:
            return _empty_lc()
        n, lc = unpack_many([bytes(d) for _o, d in rows])
        obj = np.repeat(np.array([r[0] for r in rows], dtype=np.int64), n)
        order = np.lexsort((lc["mjd"], obj))
        obj, lc = obj[order], lc[order]
        if count:
            self.reads["detections"] += len(lc)
        return (obj, lc["mjd"].copy(), lc["band"].copy(), lc["mag"].copy(), lc["err"].copy())

    def forget_objects(self, ids, detections: bool = False) -> None:
        """Drop catalogue rows (objects seen once, long ago), and with ``detections``
        their light-curve rows too."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if ids.size:
            clause, params = self._ids_clause(ids)
            self._execute(f"DELETE FROM objects WHERE {clause}", params)
            if detections:
                self._execute(f"DELETE FROM light_curves WHERE {clause}", params)

    def forget_orphans(self, before_mjd: float, detections: bool = False) -> None:
        """:meth:`forget_objects` of every object seen once, last before ``before_mjd``
        (a restart: those it does not read back)."""
        m, cut = self.mark, (float(before_mjd),)
        if detections:
            self._execute("DELETE FROM light_curves WHERE object_id IN (SELECT object_id "
                          f"FROM objects WHERE n_det <= 1 AND last_mjd < {m})", cut)
        self._execute(f"DELETE FROM objects WHERE n_det <= 1 AND last_mjd < {m}", cut)

    def get_meta(self, key: str) -> str | None:
        rows = self._query(f"SELECT value FROM store_meta WHERE key = {self.mark}", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        m = self.mark
        self._execute(f"INSERT INTO store_meta (key, value) VALUES ({m}, {m}) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def next_object_id(self) -> int:
        """One above the highest id ever given: of either table, or as recorded at the
        last close (the newest objects may have been forgotten since)."""
        rows = self._query("SELECT MAX(object_id) FROM objects")
        top = rows[0][0] if rows and rows[0][0] is not None else -1
        top = max(top, int(self.get_meta("next_object_id") or 0) - 1)
        rows = self._query("SELECT MAX(object_id) FROM light_curves")
        if rows and rows[0][0] is not None:
            top = max(top, rows[0][0])
        return int(top) + 1

    def counts(self) -> dict[str, int]:
        n_obj = self._query("SELECT COUNT(*) FROM objects")[0][0]
        n_rows, n_det = self._query("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM light_curves")[0]
        return {"objects": int(n_obj), "light_curve_rows": int(n_rows),
                "detections": int(n_det)}


def _empty_lc():
    return (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int8),
            np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))


class SQLiteStore(ObjectStore):
    _errors = (sqlite3.Error,)

    def __init__(self, url: str):
        path = Path(url.removeprefix("sqlite:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            with contextlib.suppress(Exception):
                self.db.close()
            raise StoreError(f"cannot open the object store {url}: {exc}") from None
        self.path = path
        super().__init__(url)

    def _execute(self, sql, params=()):
        return self.db.execute(sql, params)

    def _executemany(self, sql, rows):
        self.db.executemany(sql, rows)

    def _query(self, sql, params=()):
        return self.db.execute(sql, params).fetchall()

    def _ids_clause(self, ids):
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (id INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM wanted")
        self.db.executemany("INSERT INTO wanted (id) VALUES (?)", ((int(i),) for i in ids))
        return "object_id IN (SELECT id FROM wanted)", ()

    def commit(self):
        self.db.commit()

    def checkpoint(self):
        self.db.commit()
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self):
        self.checkpoint()
        self.db.close()


class PostgresStore(ObjectStore):
    binary = "BYTEA"
    mark = "%s"

    def __init__(self, url: str):
        import psycopg  # lazy: only for a PostgreSQL store

        self._errors = (psycopg.Error,)
        try:
            self.db = psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the object store {safe_url(url)}: "
                             f"{_first_line(exc)}") from None
        super().__init__(url)

    def _execute(self, sql, params=()):
        return self.db.execute(sql, params)

    def _executemany(self, sql, rows):
        with self.db.cursor() as cur:
            cur.executemany(sql, rows)

    def _query(self, sql, params=()):
        return self.db.execute(sql, params).fetchall()

    def _ids_clause(self, ids):
        return "object_id = ANY(%s)", ([int(i) for i in ids],)

    def commit(self):
        self.db.commit()

    def close(self):
        self.db.commit()
        self.db.close()


def open_store(url: str) -> ObjectStore:
    """``sqlite:///PATH`` or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise StoreError(f"store url {url!r}: expected sqlite:///PATH or postgresql://...")
