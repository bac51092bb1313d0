"""Alerts as Avro records of the versioned schema in brain/schemas (single-object encoding:
the schema's CRC-64-AVRO fingerprint in front) and the daily container files
(docs/alerts.md)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from brain.ops.alert_records import DEFAULT_STREAM, Alert, FollowupAlert, ivorn

log = logging.getLogger("brain.ops.alerts")

# Avro --------------------------------------------------------------------------------
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


MAGIC = b"\xc3\x01"  # Avro single-object encoding


def _load_schemas() -> dict[int, dict]:
    out = {}
    for p in SCHEMA_DIR.glob("sitian_alert_v*.avsc"):
        m = re.fullmatch(r"sitian_alert_v(\d+)\.avsc", p.name)
        if m:
            out[int(m.group(1))] = fastavro.parse_schema(json.loads(p.read_text()))
    if not out:
        raise RuntimeError(f"no alert schema in {SCHEMA_DIR} (package data missing?)")
    return dict(sorted(out.items()))


SCHEMAS = _load_schemas()  # version -> parsed schema; every version stays readable


SCHEMA_VERSION = max(SCHEMAS)


SCHEMA = SCHEMAS[SCHEMA_VERSION]


FINGERPRINTS = {bytes.fromhex(fingerprint(to_parsing_canonical_form(s), "CRC-64-AVRO")): v
                for v, s in SCHEMAS.items()}


FINGERPRINT = next(fp for fp, v in FINGERPRINTS.items() if v == SCHEMA_VERSION)


def to_record(alert: Alert, stream: str = DEFAULT_STREAM, role: str = "observation") -> dict:
    """The alert as a record of the current Avro schema."""
    rec = {"schema_version": SCHEMA_VERSION, "kind": alert.kind, "ivorn": ivorn(alert, stream),
           "role": role, "object_id": alert.object_id, "t_unix": alert.t,
           "t_obs_unix": alert.t_obs, "ra_deg": alert.ra_deg, "dec_deg": alert.dec_deg,
           "pos_err_arcsec": alert.pos_err_arcsec, "predicted_class": alert.predicted_class,
           "p_predicted": alert.p_predicted, "probabilities": dict(alert.probabilities),
           "classification": None, "followup": None}
    if isinstance(alert, FollowupAlert):
        rec["followup"] = {"target_id": alert.target_id, "telescope": alert.telescope,
                           "mag": alert.mag, "exposure_s": alert.exposure_s,
                           "t_end_unix": alert.t_end, "priority": alert.priority,
                           "classification_ivorn": alert.classification_ivorn}
    else:
        rec["classification"] = {"n_detections": alert.n_detections,
                                 "t_first_unix": alert.t_first, "t_last_unix": alert.t_last,
                                 "last_mag": dict(alert.last_mag)}
    return rec


def encode_record(record: dict) -> bytes:
    """A record as an Avro single-object packet: C3 01, the schema's 8-byte
    little-endian CRC-64-AVRO fingerprint, then the binary record."""
    buf = io.BytesIO()
    buf.write(MAGIC + FINGERPRINT)
    fastavro.schemaless_writer(buf, SCHEMA, record, strict=True)
    return buf.getvalue()


def to_avro(alert: Alert, stream: str = DEFAULT_STREAM, role: str = "observation") -> bytes:
    return encode_record(to_record(alert, stream, role))


def read_avro(packet: bytes) -> dict:
    """Decode a single-object packet into a record of the current schema (a packet of an
    older schema version is resolved to the current one). ValueError when the marker,
    the fingerprint or the body is wrong."""
    packet = bytes(packet)
    if len(packet) < 10 or packet[:2] != MAGIC:
        raise ValueError("not an Avro single-object packet (no C3 01 marker)")
    version = FINGERPRINTS.get(packet[2:10])
    if version is None:
        raise ValueError(f"unknown Avro schema fingerprint {packet[2:10].hex()} "
                         f"(this reader knows versions {', '.join(map(str, SCHEMAS))})")
    buf = io.BytesIO(packet[10:])
    try:
        rec = fastavro.schemaless_reader(
            buf, SCHEMAS[version], None if version == SCHEMA_VERSION else SCHEMA)
    except Exception as exc:  # truncated or garbled body
        raise ValueError(f"bad Avro alert body ({type(exc).__name__}: {exc})") from None
    if buf.tell() != len(packet) - 10:
        raise ValueError(f"{len(packet) - 10 - buf.tell()} stray bytes after the Avro record")
    return rec


def _read_header(f) -> tuple[dict, bytes]:
    if f.read(4) != b"Obj\x01":
        raise ValueError("not an Avro container")
    meta = fastavro.schemaless_reader(f, {"type": "map", "values": "bytes"})
    sync = f.read(16)
    if len(sync) != 16:
        raise ValueError("truncated header")
    return meta, sync


def prepare_container(path: Path) -> None:
    """Before appending to an existing container: cut a block left half-written by a
    crash (everything after the last sync marker), and set aside a file that is not a
    container of the current schema."""
    if path.stat().st_size == 0:
        path.unlink()
        return
    try:
        with open(path, "rb") as f:
            meta, sync = _read_header(f)
            head = f.tell()
            body = f.read()
        if meta.get("sitian.schema_fingerprint", b"").decode() != FINGERPRINT.hex():
            raise ValueError("written with another schema")
    except Exception as exc:
        aside = path.with_name(f"{path.name}.bad-{os.getpid()}")
        log.warning("alerts: %s is unusable (%s); moved to %s", path, exc, aside.name)
        os.replace(path, aside)
        return
    end = body.rfind(sync)
    good = head + (end + 16 if end >= 0 else 0)
    if good < head + len(body):
        log.warning("alerts: %s ended in a partial block (%d bytes); cut", path,
                    head + len(body) - good)
        with open(path, "r+b") as f:
            f.truncate(good)
