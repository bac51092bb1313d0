"""Light curves in and out of ``brain classify`` (docs/contracts.md).

Input CSV columns: object_id, mjd, band, mag, mag_err (detections; band g, r or i; AB);
optional ra_deg, dec_deg (the object's position) and ref_mag (what the survey's
reference holds at the detection in its band: a magnitude, ``none`` for nothing there,
empty for unknown; docs/protocol.md).
Every problem is reported in one line naming the row and column; nothing is guessed.
UTF-8, with or without the byte-order mark spreadsheets write. Values outside the
physical ranges below are refused, not computed with (docs/cli-edges.md).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from observatory.bands import BAND_INDEX
from observatory.taxonomy import CLASSES

REQUIRED = ("object_id", "mjd", "band", "mag", "mag_err")
POSITION = ("ra_deg", "dec_deg")  # optional: the classifier then uses the sky context
REFERENCE = "ref_mag"  # optional: the reference at each detection (policies/context.py)
NOTHING = "none"  # a ref_mag of nothing there (the protocol's nil)
MAX_ID_CHARS = 128
MAG_RANGE = (-30.0, 40.0)  # AB: brighter than the full Moon to beyond any telescope
MAG_ERR_MAX = 20.0  # (0, 20]: real surveys' faintest points reach ~13 mag of error
MJD_RANGE = (0.0, 100_000.0)  # 1858-11-17 to 2132-08-31


class LightCurveInputError(ValueError):
    """A one-line description of what is wrong with the input."""


@dataclass
class DetectionTable:
    """Detections sorted by object then time; ``obj`` indexes ``object_ids``."""

    object_ids: list[str]
    obj: np.ndarray
    mjd: np.ndarray
    band: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    radec: np.ndarray | None = None  # (n_objects, 2) degrees, NaN where not given
    ref: np.ndarray | None = None  # (n_objects, 3) g, r, i: NaN unknown, +inf nothing


def _number(text: str, row: int, col: str, lo: float, hi: float) -> float:
    try:
        v = float(text)
    except ValueError:
        raise LightCurveInputError(f"row {row}: {col} is not a number: {text[:40]!r}") from None
    if not math.isfinite(v):
        raise LightCurveInputError(f"row {row}: {col} is not finite: {text!r}")
    if not lo <= v <= hi:
        raise LightCurveInputError(f"row {row}: {col} {text.strip()[:40]} is outside "
                                   f"[{lo:g}, {hi:g}]")
    return v


def read_detections_csv(path: str | Path) -> DetectionTable:
    p = Path(path)
    if p.is_dir():
        raise LightCurveInputError(f"{str(p)!r} is a directory, not a CSV file")
    if not p.is_file():
        raise LightCurveInputError(f"file {str(p)!r} not found")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                return _read_rows(p, reader)
            except csv.Error as exc:  # e.g. a NUL byte, an endless quoted field
                raise LightCurveInputError(f"{p}: row {reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LightCurveInputError(f"{p}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise LightCurveInputError(f"cannot read {str(p)!r}: {exc.strerror}") from None


def _read_rows(p: Path, reader) -> DetectionTable:
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise LightCurveInputError(f"{p}: empty file (expected a header: "
                                   f"{', '.join(REQUIRED)})")
    names = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise LightCurveInputError(f"{p}: missing column(s) {', '.join(missing)}")
    col = {c: names.index(c) for c in REQUIRED}
    pos = [names.index(c) for c in POSITION if c in names]
    if len(pos) == 1:
        raise LightCurveInputError(f"{p}: a position needs both {' and '.join(POSITION)}")
    ref_col = names.index(REFERENCE) if REFERENCE in names else None
    ids, mjd, band, mag, err, ra, dec, refs = [], [], [], [], [], [], [], []
    for row_no, row in enumerate(reader, start=2):
        if not row or not any(x.strip() for x in row):
            continue
        if len(row) < len(names):
            raise LightCurveInputError(f"row {row_no}: {len(row)} fields, expected "
                                       f"{len(names)}")
        oid = row[col["object_id"]].strip()
        if not oid:
            raise LightCurveInputError(f"row {row_no}: empty object_id")
        if len(oid) > MAX_ID_CHARS:
            raise LightCurveInputError(f"row {row_no}: object_id of {len(oid)} "
                                       f"characters (at most {MAX_ID_CHARS})")
        b = row[col["band"]].strip()
        if b not in BAND_INDEX:
            raise LightCurveInputError(f"row {row_no}: unknown band {b!r} (use g, r or i)")
        e = _number(row[col["mag_err"]], row_no, "mag_err", -math.inf, math.inf)
        if not 0 < e <= MAG_ERR_MAX:
            raise LightCurveInputError(f"row {row_no}: mag_err must be positive, got {e}"
                                       if e <= 0 else f"row {row_no}: mag_err {e:g} is "
                                       f"above {MAG_ERR_MAX:g} mag")
        ids.append(oid)
        mjd.append(_number(row[col["mjd"]], row_no, "mjd", *MJD_RANGE))
        band.append(BAND_INDEX[b])
        mag.append(_number(row[col["mag"]], row_no, "mag", *MAG_RANGE))
        err.append(e)
        if pos:
            r_text, d_text = row[pos[0]].strip(), row[pos[1]].strip()
            if bool(r_text) != bool(d_text):
                raise LightCurveInputError(f"row {row_no}: a position needs both "
                                           f"{' and '.join(POSITION)}")
            ra.append(_number(r_text, row_no, "ra_deg", 0.0, 360.0) if r_text else math.nan)
            dec.append(_number(d_text, row_no, "dec_deg", -90.0, 90.0) if d_text
                       else math.nan)
        if ref_col is not None:
            text = row[ref_col].strip()
            refs.append(math.nan if not text else math.inf if text.lower() == NOTHING
                        else _number(text, row_no, REFERENCE, *MAG_RANGE))
    if not ids:
        raise LightCurveInputError(f"{p}: no detections after the header")
    object_ids, obj = np.unique(np.array(ids), return_inverse=True)
    mjd_a = np.array(mjd)
    order = np.lexsort((mjd_a, obj))
    band_a = np.array(band)
    ref = None
    if ref_col is not None:  # per object and band, the latest row that says
        ref = np.full((len(object_ids), 3), np.nan)
        r = np.array(refs)[order]
        said = ~np.isnan(r)
        key, vals = (obj[order] * 3 + band_a[order])[said], r[said]
        _, last = np.unique(key[::-1], return_index=True)
        last = key.size - 1 - last
        ref.reshape(-1)[key[last]] = vals[last]
    return DetectionTable([str(x) for x in object_ids], obj[order], mjd_a[order],
                          band_a[order], np.array(mag)[order], np.array(err)[order],
                          _positions(obj, ra, dec, len(object_ids)) if pos else None, ref)


def _positions(obj: np.ndarray, ra: list, dec: list, n: int) -> np.ndarray:
    """Each object's position: the mean of its rows' (on the sphere; rows left empty do
    not count), NaN where none of its rows gives one."""
    ra_r, dec_r = np.radians(np.array(ra)), np.radians(np.array(dec))
    ok = np.isfinite(ra_r)
    xyz = np.stack([np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r),
                    np.sin(dec_r)], axis=1)[ok]
    s = np.stack([np.bincount(obj[ok], weights=xyz[:, k], minlength=n) for k in range(3)], 1)
    out = np.full((n, 2), np.nan)
    has = np.bincount(obj[ok], minlength=n) > 0
    out[has, 0] = np.degrees(np.arctan2(s[has, 1], s[has, 0])) % 360.0
    out[has, 1] = np.degrees(np.arctan2(s[has, 2], np.hypot(s[has, 0], s[has, 1])))
    return out


def classification_json(object_ids: list[str], prob: np.ndarray, classes) -> dict:
    """{object_id: {"class": C, "probabilities": {C: p, ...}}}, every class present."""
    out = {}
    for oid, p in zip(object_ids, prob, strict=True):
        p = np.asarray(p, dtype=float)
        p = p / p.sum()
        out[oid] = {"class": classes[int(np.argmax(p))],
                    "probabilities": {c: float(x) for c, x in zip(classes, p, strict=True)}}
    return out


@dataclass
class LabelledSet:
    """Light curves with spectroscopic labels (from runs' labelled.csv files)."""

    obj: np.ndarray
    mjd: np.ndarray
    band: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    label: np.ndarray  # index into the taxonomy, one per object

    @property
    def n(self) -> int:
        return len(self.label)


def read_labelled(paths) -> LabelledSet:
    """Merge labelled.csv files (the detection columns plus ``label``); object ids are
    made unique per file. Unknown labels are an error."""

    parts, offset = [], 0
    for path in paths:
        table = read_detections_csv(path)
        labels: dict[str, str] = {}
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            for row_no, row in enumerate(csv.DictReader(fh), start=2):
                lab = (row.get("label") or "").strip()
                if lab not in CLASSES:
                    raise LightCurveInputError(f"{path}: row {row_no}: unknown label {lab!r}")
                labels[row["object_id"].strip()] = lab
        y = np.array([CLASSES.index(labels[o]) for o in table.object_ids], dtype=np.int64)
        parts.append((table.obj + offset, table.mjd, table.band, table.mag, table.err, y))
        offset += len(table.object_ids)
    if not parts:
        raise LightCurveInputError("no labelled runs given")
    return LabelledSet(*(np.concatenate([p[k] for p in parts]) for k in range(6)))
