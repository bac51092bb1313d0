"""SBP1, the SiTian Brain device protocol (docs/protocol.md): framing, message
validation and the error codes, shared by the brain's ROUTER and the devices' DEALERs.

A message on the wire is two frames, ``b"SBP1"`` and one msgpack map
``{type, id, t, body}``. :func:`decode` turns frames into a :class:`Message` or raises
:class:`ProtocolError` carrying the first error code that applies, in the order
docs/protocol.md fixes: ``bad_frame``, ``too_large``, ``bad_message``, ``unknown_type``
(``unknown_device`` and ``not_welcomed`` depend on the link's state and are the link's
to decide). Bodies are checked field by field; unknown extra keys are kept (the protocol
may be extended in writing), mistyped or missing ones are ``bad_message``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from observatory.bands import BANDS

MAGIC = b"SBP1"
PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB, docs/protocol.md's default limit
DEVICE_ID = re.compile(r"[a-z0-9._-]{1,64}")

FROM_DEVICE = frozenset({"HELLO", "HEARTBEAT", "ACK", "PROGRESS", "DONE", "FAILED", "EVENT",
                         "ERROR", "BYE"})
FROM_BRAIN = frozenset({"WELCOME", "HEARTBEAT", "COMMAND", "ERROR", "BYE"})
TYPES = FROM_DEVICE | FROM_BRAIN

KINDS = ("telescope", "weather", "spectrograph", "enclosure")
IDEMPOTENT_COMMANDS = frozenset({"park", "open", "close", "abort", "status"})
DEVICE_STATES = ("idle", "busy", "parked", "closed", "fault")

ERROR_CODES = ("bad_frame", "bad_message", "unknown_type", "too_large", "not_welcomed",
               "unknown_device", "unknown_command", "bad_args", "unsafe", "busy", "aborted",
               "timeout", "device_fault", "unauthorised")


class ProtocolError(Exception):
    """A message the receiver must answer with one ERROR and otherwise ignore."""

    def __init__(self, code: str, message: str, ref: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.ref = code, message, ref


@dataclass(frozen=True, slots=True)
class Message:
    type: str
    id: str
    t: float
    body: dict[str, Any]


_counter = itertools.count(1)
_prefix = os.urandom(4).hex()


def new_id() -> str:
    """A message id unique per sender: a random per-process prefix and a counter."""
    return f"{_prefix}-{next(_counter)}"


def encode(type_: str, body: dict[str, Any] | None = None, t: float = 0.0,
           msg_id: str | None = None) -> list[bytes]:
    """The two frames of one message (the ROUTER side puts the identity in front)."""
    return [MAGIC, msgpack.packb({"type": type_, "id": msg_id or new_id(), "t": float(t),
                                  "body": body or {}}, use_bin_type=True)]


# Field checks -----------------------------------------------------------------------
def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _str(v) -> bool:
    return isinstance(v, str)


def _map(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool(v) -> bool:
    return isinstance(v, bool)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _opt_str(v) -> bool:
    return v is None or isinstance(v, str)


# type -> {field: (check, required)}
BODIES: dict[str, dict[str, tuple]] = {
    "HELLO": {"kind": (_str, True), "site": (_str, True), "capabilities": (_str_list, True),
              "protocol": (_int, True), "state": (_map, True), "group": (_int, False),
              "band": (_str, False)},
    "WELCOME": {"session": (_str, True), "heartbeat_s": (_num, True),
                "failsafe_s": (_num, True)},
    "HEARTBEAT": {"state": (_map, False)},
    "COMMAND": {"cmd_id": (_str, True), "name": (_str, True), "args": (_map, True),
                "deadline": (_num, True), "idempotent": (_bool, True)},
    "ACK": {"cmd_id": (_str, True)},
    "PROGRESS": {"cmd_id": (_str, True), "eta": (_num, True)},
    "DONE": {"cmd_id": (_str, True), "result": (_map, True)},
    "FAILED": {"cmd_id": (_str, True), "code": (_str, True), "message": (_str, True)},
    "EVENT": {"name": (_str, True), "data": (_map, True)},
    "ERROR": {"code": (_str, True), "message": (_str, True), "ref": (_opt_str, False)},
    "BYE": {"reason": (_str, True)},
}

WEATHER_FIELDS = {"wind_mps": _num, "humidity": _num, "rain": _bool, "cloud": _num,
                  "seeing_arcsec": _num, "dew_margin_c": _num}
# Optional: the station's own verdict and why (docs/protocol.md, "weather").
WEATHER_OPTIONAL = {"station_safe": _bool, "station_reason": _str}
STATION_REASON_MAX = 200
SOURCE_FIELDS = ("ra_deg", "dec_deg", "mag", "mag_err")
# A reference magnitude outside this (AB) is not one: taken as unknown (docs/protocol.md).
REF_MAG_RANGE = (-30.0, 40.0)


def weather_values(data: dict) -> dict:
    """A checked ``weather`` event's data as the brain's ``Weather`` fields (after the
    time and site): the six values, and the station's verdict (safe when not given)."""
    return {"wind_mps": float(data["wind_mps"]), "humidity": float(data["humidity"]),
            "rain": bool(data["rain"]), "cloud": float(data["cloud"]),
            "seeing_arcsec": float(data["seeing_arcsec"]),
            "dew_margin_c": float(data["dew_margin_c"]),
            "station_safe": bool(data.get("station_safe", True)),
            "station_reason": str(data.get("station_reason", ""))[:STATION_REASON_MAX]}


def reference_magnitudes(sources: list[dict]) -> tuple[list[float], int]:
    """The ``ref_mag`` of checked detections sources as floats: NaN where absent
    (unknown), +inf where nil (nothing in the reference), NaN too where the number is
    outside ``REF_MAG_RANGE``; and how many were outside."""
    out, bad = [], 0
    lo, hi = REF_MAG_RANGE
    for s in sources:
        v = s.get("ref_mag", math.nan)
        v = math.inf if v is None else float(v)
        if math.isfinite(v) and not lo <= v <= hi:
            v, bad = math.nan, bad + 1
        out.append(v)
    return out, bad


def _check_body(type_: str, body: dict, ref: str | None) -> None:
    for name, (check, required) in BODIES[type_].items():
        if name not in body:
            if required:
                raise ProtocolError("bad_message", f"{type_} body lacks {name!r}", ref)
            continue
        if not check(body[name]):
            raise ProtocolError("bad_message", f"{type_} body field {name!r} has the wrong "
                                f"type ({type(body[name]).__name__})", ref)
    if type_ == "HELLO":
        if body["kind"] not in KINDS:
            raise ProtocolError("bad_message", f"HELLO kind {body['kind']!r} not one of "
                                f"{', '.join(KINDS)}", ref)
        if body["protocol"] != PROTOCOL_VERSION:
            raise ProtocolError("bad_message", f"protocol {body['protocol']} not supported "
                                f"(this brain speaks {PROTOCOL_VERSION})", ref)
        if body["kind"] == "telescope":
            if not _int(body.get("group")) or body.get("band") not in BANDS:
                raise ProtocolError("bad_message", "a telescope's HELLO needs an int group "
                                    "and a band g, r or i", ref)
    elif type_ == "EVENT":
        _check_event(body["name"], body["data"], ref)


def _check_event(name: str, data: dict, ref: str | None) -> None:
    if name == "weather":
        for f, check in WEATHER_FIELDS.items():
            if f not in data or not check(data[f]):
                raise ProtocolError("bad_message", f"weather event lacks a valid {f!r}", ref)
        for f, check in WEATHER_OPTIONAL.items():
            if f in data and not check(data[f]):
                raise ProtocolError("bad_message", f"weather event's {f!r} is not a "
                                    f"{'bool' if f == 'station_safe' else 'str'}", ref)
    elif name == "detections":
        for f, check in (("obs_id", _str), ("band", _str), ("t_mid", _num),
                         ("limiting_mag", _num), ("field_id", _int)):
            if f not in data or not check(data[f]):
                raise ProtocolError("bad_message", f"detections event lacks a valid {f!r}",
                                    ref)
        src = data.get("sources")
        if not isinstance(src, list):
            raise ProtocolError("bad_message", "detections event lacks a sources list", ref)
        for s in src:
            if not isinstance(s, dict) or not all(_num(s.get(k)) for k in SOURCE_FIELDS):
                raise ProtocolError("bad_message", "a detections source needs numeric "
                                    "ra_deg, dec_deg, mag, mag_err", ref)
            if "ref_mag" in s and not (s["ref_mag"] is None or _num(s["ref_mag"])):
                raise ProtocolError("bad_message", "a detections source's ref_mag must be "
                                    "a number or null", ref)
    elif name == "state":
        if data.get("state") not in (*DEVICE_STATES, "dead"):
            raise ProtocolError("bad_message", "state event needs state idle, busy, parked, "
                                "closed or fault", ref)
    elif name == "fault":
        if not (_str(data.get("code")) and _str(data.get("message"))):
            raise ProtocolError("bad_message", "fault event needs code and message", ref)


def decode(frames: list[bytes], accept: frozenset[str]) -> Message:
    """Validate the two frames a peer sent. ``accept``: the types this side may receive
    (:data:`FROM_DEVICE` on the brain, :data:`FROM_BRAIN` on a device)."""
    if len(frames) != 2 or frames[0] != MAGIC:
        raise ProtocolError("bad_frame", "expected two frames, b'SBP1' and one msgpack map")
    raw = frames[1]
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # any undecodable payload is the peer's error, never ours
        raise ProtocolError("bad_message", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "not a msgpack map")
    ref = obj.get("id") if isinstance(obj.get("id"), str) else None
    for name, check in (("type", _str), ("id", _str), ("t", _num), ("body", _map)):
        if name not in obj:
            raise ProtocolError("bad_message", f"missing {name!r}", ref)
        if not check(obj[name]):
            raise ProtocolError("bad_message", f"field {name!r} has the wrong type", ref)
    type_ = obj["type"]
    if type_ not in TYPES:
        raise ProtocolError("unknown_type", f"unknown type {type_[:40]!r}", ref)
    if type_ not in accept:
        raise ProtocolError("bad_message", f"{type_} is not sent by this side", ref)
    _check_body(type_, obj["body"], ref)
    return Message(type_, obj["id"], float(obj["t"]), obj["body"])
