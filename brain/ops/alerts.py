"""Alerts: classifications and follow-up triggers as VOEvent 2.0 and Avro packets.

Two alert kinds leave the brain (docs/alerts.md):

* :class:`ClassificationAlert` — a candidate's class probabilities after the core
  classified it (``BrainCore.finish_classification``);
* :class:`FollowupAlert` — a spectrum the follow-up manager commanded
  (``FollowupManager.act``: the ``spectrum`` command and its ``FollowupRecord``).

Each is written as an IVOA VOEvent 2.0 packet (:func:`to_voevent`, validated against the
VOEvent 2.0 XSD before it is returned) and as an Avro record of the versioned schema in
``brain/schemas/sitian_alert_vN.avsc`` (:func:`to_avro`: Avro single-object encoding,
the schema's CRC-64-AVRO fingerprint in front). :class:`AlertSink` writes both to a
directory and publishes them on the PUB feed; :func:`decode_feed_alert` reads one back.
Inputs are plain values, so the module knows nothing of the daemon or the core.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import fastavro
import msgpack
import numpy as np
import voeventparse as vp
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.write import Writer
from lxml import etree

from drivers import protocol as P

log = logging.getLogger("brain.ops.alerts")

DEFAULT_STREAM = "sitian.cn/brain"  # IVORN authority / resource
ROLES = ("observation", "prediction", "utility", "test")
SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
TAXONOMY_URI = "ivo://sitian.cn/taxonomy#"  # Why/Inference/Concept: <uri><class>
MJD_UNIX_EPOCH = 40587.0
BAND_UCD = {"g": "phot.mag;em.opt.B", "r": "phot.mag;em.opt.R", "i": "phot.mag;em.opt.I"}


# The alerts ------------------------------------------------------------------------
def _finite(name: str, v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, not {v}")
    return v


def _opt(name: str, v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else _finite(name, v)


def _check_where(a) -> None:
    """Shared checks; normalises to plain floats (msgpack, Avro and XML want them)."""
    if not SAFE_ID.fullmatch(a.object_id):
        raise ValueError(f"object_id {a.object_id!r} is not [A-Za-z0-9._-]{{1,64}}")
    dec = _finite("dec_deg", a.dec_deg)
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"dec_deg {dec} outside [-90, 90]")
    object.__setattr__(a, "t", _finite("t", a.t))
    object.__setattr__(a, "ra_deg", _finite("ra_deg", a.ra_deg) % 360.0)
    object.__setattr__(a, "dec_deg", dec)
    err = _finite("pos_err_arcsec", a.pos_err_arcsec)
    if err <= 0:
        raise ValueError("pos_err_arcsec must be positive")
    object.__setattr__(a, "pos_err_arcsec", err)
    probs = {}
    for c, p in dict(a.probabilities).items():
        p = _finite(f"probability of {c}", p)
        if not -1e-9 <= p <= 1 + 1e-9:
            raise ValueError(f"probability of {c} is {p}, outside [0, 1]")
        probs[str(c)] = min(max(p, 0.0), 1.0)
    if probs and abs(sum(probs.values()) - 1.0) > 1e-3:
        raise ValueError(f"class probabilities sum to {sum(probs.values()):.4f}, not 1")
    object.__setattr__(a, "probabilities", probs)


@dataclass(frozen=True)
class ClassificationAlert:
    """A candidate's classification, as the core holds it after ``finish_classification``.

    ``t``: when the brain classified it (Unix s UTC, world time; the VOEvent's Who/Date);
    ``probabilities``: class -> probability over the taxonomy (sums to 1);
    ``n_detections``: detections associated so far (all bands); ``t_first``/``t_last``:
    first and latest detection (Unix s; ``t_last`` is the VOEvent's WhereWhen time);
    ``last_mag``: band -> latest AB magnitude in that band; ``pos_err_arcsec``: position
    error radius (default 1″; the association radius is a safe upper bound)."""

    object_id: str
    t: float
    ra_deg: float
    dec_deg: float
    probabilities: Mapping[str, float]
    n_detections: int
    t_first: float | None = None
    t_last: float | None = None
    last_mag: Mapping[str, float] = field(default_factory=dict)
    pos_err_arcsec: float = 1.0

    kind: ClassVar[str] = "classification"

    def __post_init__(self):
        _check_where(self)
        if not self.probabilities:
            raise ValueError("a classification needs class probabilities")
        if int(self.n_detections) < 0:
            raise ValueError("n_detections must be >= 0")
        object.__setattr__(self, "n_detections", int(self.n_detections))
        object.__setattr__(self, "t_first", _opt("t_first", self.t_first))
        object.__setattr__(self, "t_last", _opt("t_last", self.t_last))
        object.__setattr__(self, "last_mag", {str(b): _finite(f"last_mag[{b}]", m)
                                              for b, m in dict(self.last_mag).items()
                                              if m is not None and math.isfinite(m)})

    @property
    def predicted_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def p_predicted(self) -> float:
        return self.probabilities[self.predicted_class]

    @property
    def t_obs(self) -> float:
        return self.t_last if self.t_last is not None else self.t

    @property
    def local_id(self) -> str:
        return f"cls/{self.object_id}/{_stamp(self.t)}"


@dataclass(frozen=True)
class FollowupAlert:
    """A spectrum the follow-up manager commanded (its ``spectrum`` command and record).

    ``t``: when it was commanded (Unix s UTC, world time; Who/Date and WhereWhen time);
    ``telescope``: the spectroscopic telescope's device id (``xl.spec``); ``mag``: the
    latest AB magnitude the exposure was planned for; ``exposure_s``; ``t_end``: planned
    end (Unix s); ``priority``: the target's expected science reward when the caller has
    it; ``probabilities``: its class probabilities when known; ``classification_ivorn``:
    the classification alert it follows (:class:`AlertSink` fills it in when it sent
    one for the object)."""

    target_id: str
    object_id: str
    t: float
    ra_deg: float
    dec_deg: float
    telescope: str
    predicted_class: str
    p_predicted: float
    mag: float | None = None
    exposure_s: float | None = None
    t_end: float | None = None
    priority: float | None = None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    classification_ivorn: str | None = None
    pos_err_arcsec: float = 1.0

    kind: ClassVar[str] = "followup"

    def __post_init__(self):
        _check_where(self)
        for name in ("target_id", "telescope"):
            if not SAFE_ID.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not [A-Za-z0-9._-]{{1,64}}")
        if not self.predicted_class:
            raise ValueError("predicted_class is empty")
        p = _finite("p_predicted", self.p_predicted)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_predicted {p} outside [0, 1]")
        object.__setattr__(self, "p_predicted", p)
        for name in ("mag", "exposure_s", "t_end", "priority"):
            object.__setattr__(self, name, _opt(name, getattr(self, name)))

    @property
    def site(self) -> str:
        return self.telescope.split(".", 1)[0]

    @property
    def t_obs(self) -> float:
        return self.t

    @property
    def local_id(self) -> str:
        return f"fu/{self.target_id}/{_stamp(self.t)}"


Alert = ClassificationAlert | FollowupAlert


def ivorn(alert: Alert, stream: str = DEFAULT_STREAM) -> str:
    """``ivo://<authority>/<resource>#<kind>/<id>/<UTC stamp>``, unique per alert."""
    return f"ivo://{stream}#{alert.local_id}"


def _stamp(t_unix: float) -> str:
    ms = round(t_unix * 1000)
    return (datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y%m%dT%H%M%S")
            + f".{ms % 1000:03d}")


def _utc(t_unix: float) -> datetime:
    return datetime.fromtimestamp(t_unix, UTC)


def _mjd(t_unix: float) -> float:
    return t_unix / 86400.0 + MJD_UNIX_EPOCH


# Building alerts from what the core holds ---------------------------------------------
def classification_alerts(t: float, object_ids, prob, classes, associator,
                          bands=("g", "r", "i"), pos_err_arcsec: float = 1.0
                          ) -> list[ClassificationAlert]:
    """Alerts for the objects a classification job just classified.

    ``object_ids``/``prob``: the job's answer (``cand``, ``prob`` of
    ``BrainCore.finish_classification``); ``classes``: the classifier's class names;
    ``associator``: anything with ``light_curves``, ``n_detections``, ``obj_ra``,
    ``obj_dec`` like ``brain.core.association.Associator`` (band codes index ``bands``)."""
    ids = np.asarray(object_ids, dtype=np.int64)
    prob = np.asarray(prob, dtype=float)
    if ids.size == 0:
        return []
    order = np.argsort(ids, kind="stable")
    ids, prob = ids[order], prob[order]
    obj, mjd, band, mag, _err = associator.light_curves(ids)
    local = np.searchsorted(ids, obj)
    n, nb = ids.size, len(bands)
    first = np.full(n, np.inf)
    np.minimum.at(first, local, mjd)
    last = np.full(n, -np.inf)
    np.maximum.at(last, local, mjd)
    latest = np.full((n, nb), -1)  # rows are sorted by time within each object
    ok = (band >= 0) & (band < nb)
    np.maximum.at(latest, (local[ok], band[ok].astype(np.int64)), np.flatnonzero(ok))
    ndet = associator.n_detections()[ids]
    ra, dec = associator.obj_ra.view[ids], associator.obj_dec.view[ids]
    def to_unix(m: float) -> float | None:
        return (m - MJD_UNIX_EPOCH) * 86400.0 if math.isfinite(m) else None

    out = []
    for k in range(n):
        out.append(ClassificationAlert(
            f"o{int(ids[k]):07d}", t, float(ra[k]), float(dec[k]),
            dict(zip(classes, prob[k].tolist(), strict=True)), int(ndet[k]),
            to_unix(float(first[k])), to_unix(float(last[k])),
            {b: float(mag[latest[k, j]]) for j, b in enumerate(bands) if latest[k, j] >= 0},
            pos_err_arcsec))
    return out


def followup_alert(cmd, record, probabilities: Mapping[str, float] | None = None,
                   priority: float | None = None, pos_err_arcsec: float = 1.0
                   ) -> FollowupAlert:
    """The alert of a ``spectrum`` command (``cmd.args``: target_id, object_id, ra_deg,
    dec_deg, seconds) and its ``brain.core.followup.FollowupRecord``."""
    a = cmd.args
    return FollowupAlert(
        a["target_id"], a["object_id"], record.t_cmd, a["ra_deg"], a["dec_deg"],
        record.telescope, record.predicted_class, record.p_predicted, record.mag,
        a.get("seconds"), record.t_end, priority, dict(probabilities or {}),
        pos_err_arcsec=pos_err_arcsec)


# VOEvent 2.0 -------------------------------------------------------------------------
_SCHEMA_LOCK = threading.Lock()
_VOEVENT_SCHEMA = etree.XMLSchema(etree.fromstring(vp.definitions.v2_0_schema_str))


def validate_voevent(xml: bytes) -> None:
    """Raise ValueError (first schema error, with its line) unless ``xml`` is a valid
    VOEvent 2.0 packet."""
    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not a VOEvent 2.0 packet: not well-formed XML ({exc})") from None
    with _SCHEMA_LOCK:  # an XMLSchema's error log is shared state
        if _VOEVENT_SCHEMA.validate(root):
            return
        err = _VOEVENT_SCHEMA.error_log.filter_from_errors()[0]
    raise ValueError(f"not a valid VOEvent 2.0 packet: line {err.line}: {err.message}")


def _param(name, value, unit=None, ucd=None, description=None):
    if isinstance(value, float | np.floating):
        value = repr(float(value))  # shortest exact form: floats round-trip
        p = vp.Param(name, value, unit=unit, ucd=ucd, dataType="float")
    else:
        p = vp.Param(name, value, unit=unit, ucd=ucd)
    if description:
        p.Description = description
    return p


def _site_location(site_id: str, site) -> etree._Element:
    """A ground site as STC: geodetic longitude, latitude (deg) and height (m)."""
    if isinstance(site, tuple | list):
        lat, lon, height = site
    else:
        lat, lon, height = site.lat_deg, site.lon_deg, site.height_m
    loc = etree.Element("ObservatoryLocation", id=site_id)
    etree.SubElement(loc, "AstroCoordSystem", id="UTC-GEOD-TOPO")
    ac = etree.SubElement(loc, "AstroCoords", coord_system_id="UTC-GEOD-TOPO")
    pos = etree.SubElement(ac, "Position3D", unit="deg-deg-m")
    for tag, text in (("Name1", "longitude"), ("Name2", "latitude"), ("Name3", "elevation")):
        etree.SubElement(pos, tag).text = text
    v = etree.SubElement(pos, "Value3")
    for tag, x in (("C1", lon), ("C2", lat), ("C3", height)):
        etree.SubElement(v, tag).text = repr(float(x))
    return loc


def to_voevent(alert: Alert, stream: str = DEFAULT_STREAM, role: str = "observation",
               sites: Mapping[str, Any] | None = None) -> bytes:
    """The alert as a VOEvent 2.0 packet (UTF-8 XML), validated against the VOEvent 2.0
    schema (ValueError if it is not valid, e.g. an unknown ``role``).

    ``sites``: site id -> an object with ``lat_deg``, ``lon_deg``, ``height_m`` (the
    config's ``sites``) or a (lat, lon, height) tuple; a follow-up's site is given as
    its ObservatoryLocation, a classification (three sites) as ``GEOSURFACE``."""
    fu = isinstance(alert, FollowupAlert)
    v = vp.Voevent(stream=stream, stream_id=alert.local_id, role=role)
    vp.set_who(v, date=_utc(alert.t), author_ivorn=stream)
    vp.set_author(v, title="SiTian Brain", shortName="SiTian")
    v.Who.Description = ("SiTian Brain: control software of the SiTian 54-telescope "
                         "survey array")
    w = v.What
    w.append(_param("object_id", alert.object_id, ucd="meta.id;meta.main",
                    description="SiTian Brain object id"))
    w.append(_param("predicted_class", alert.predicted_class, ucd="src.class",
                    description="most probable class of the SiTian taxonomy"))
    w.append(_param("p_predicted", alert.p_predicted, ucd="stat.probability"))
    if fu:
        w.append(_param("target_id", alert.target_id, ucd="meta.id",
                        description="spectroscopic target id"))
        w.append(_param("telescope", alert.telescope, ucd="meta.id;instr.tel",
                        description="spectroscopic telescope (device id)"))
        for name, val, unit, ucd, desc in (
                ("mag", alert.mag, "mag", "phot.mag", "latest AB magnitude"),
                ("exposure", alert.exposure_s, "s", "time.duration;obs.exposure", None),
                ("end_mjd", None if alert.t_end is None else _mjd(alert.t_end), "d",
                 "time.end;obs", "planned end of the spectrum (UTC)"),
                ("priority", alert.priority, None, "stat.weight",
                 "expected science reward")):
            if val is not None:
                w.append(_param(name, float(val), unit=unit, ucd=ucd, description=desc))
    else:
        w.append(_param("n_detections", alert.n_detections, ucd="meta.number;obs"))
        for name, val, ucd in (("first_detection_mjd", alert.t_first, "time.start;obs"),
                               ("last_detection_mjd", alert.t_last, "time.end;obs")):
            if val is not None:
                w.append(_param(name, _mjd(val), unit="d", ucd=ucd))
        if alert.last_mag:
            w.append(vp.Group([_param(f"mag_{b}", m, unit="mag",
                                      ucd=BAND_UCD.get(b, "phot.mag"),
                                      description=f"latest AB magnitude in {b}")
                               for b, m in alert.last_mag.items()],
                              name="last_mag", type="photometry"))
    if alert.probabilities:
        w.append(vp.Group([_param(c, p, ucd="stat.probability")
                           for c, p in alert.probabilities.items()],
                          name="class_probabilities", type="classification"))
    site = alert.site if fu else None
    location = (site if sites is not None and site in sites else
                vp.definitions.observatory_location.geosurface)
    vp.add_where_when(v, vp.Position2D(alert.ra_deg, alert.dec_deg,
                                       alert.pos_err_arcsec / 3600.0, "deg", "UTC-ICRS-TOPO"),
                      _utc(alert.t_obs), location)
    if location == site:
        odl = v.WhereWhen.ObsDataLocation
        odl.replace(odl.ObservatoryLocation, _site_location(site, sites[site]))
    vp.add_how(v, descriptions=(
        f"Spectroscopic follow-up commanded to {alert.telescope} by the SiTian Brain "
        "follow-up manager." if fu else
        "SiTian survey array: 18 co-pointed g/r/i groups at Xinglong, Lenghu and "
        "Muztagh-ata; detections associated into light curves and classified by the "
        "SiTian Brain transient classifier."))
    # voeventparse's add_why/add_citations use collections.Iterable (gone in Python
    # 3.10) on anything but a string: the elements are appended directly.
    etree.SubElement(v, "Why").append(vp.Inference(
        probability=alert.p_predicted, relation="identified", name=alert.predicted_class,
        concept=TAXONOMY_URI + alert.predicted_class))
    if fu and alert.classification_ivorn:
        etree.SubElement(v, "Citations").append(vp.EventIvorn(
            alert.classification_ivorn, vp.definitions.cite_types.followup))
    try:
        xml = vp.dumps(v, pretty_print=True)
    except (ValueError, TypeError) as exc:  # e.g. text that XML cannot carry
        raise ValueError(f"cannot write VOEvent {ivorn(alert, stream)}: {exc}") from None
    validate_voevent(xml)
    return xml


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


def _prepare_container(path: Path) -> None:
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


# The sink ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedAlert:
    """An alert read off the PUB feed: the envelope time, the VOEvent XML and the Avro
    record (current schema)."""

    t: float
    kind: str
    ivorn: str
    voevent: bytes
    record: dict


class AlertSink:
    """Writes every alert to ``out_dir`` and publishes it on the feed.

    * ``out_dir/voevent/<kind>_<id>_<stamp>.xml``: one VOEvent per alert, written to a
      temporary name and renamed (a file is whole or absent);
    * ``out_dir/avro/<kind>-<YYYYMMDD>-v<N>.avro``: one Avro container per kind, UTC date
      of the alert and schema version, one block appended and flushed per alert (a
      crash loses at most the block being written, cut off at the next start);
    * ``publish(topic, "EVENT", {"name": "alert", "data": {...}})`` (``BrainLink.publish``).

    :meth:`emit` never raises: a failed output is logged (the first ten of each kind,
    then every hundredth), counted in ``failed`` and ``errors[output]``, and the others
    still run. Call it from one thread (the PUB socket is not thread-safe)."""

    def __init__(self, out_dir: str | os.PathLike | None,
                 publish: Callable[[str, str, dict], None] | None = None,
                 role: str = "observation", stream: str = DEFAULT_STREAM,
                 sites: Mapping[str, Any] | None = None, topic: str = "brain"):
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.publish = publish
        self.role, self.stream, self.sites, self.topic = role, stream, sites, topic
        self.emitted = 0  # alerts every output took
        self.failed = 0  # alerts at least one output missed (or that could not be built)
        self.errors: Counter[str] = Counter()  # invalid, voevent_file, avro_file, publish
        self.by_kind: Counter[str] = Counter()  # emitted alerts per kind
        self._writers: dict[Path, tuple[Any, Writer]] = {}
        self._cls_ivorn: OrderedDict[str, str] = OrderedDict()  # object -> last cls alert
        self._lock = threading.Lock()

    def emit(self, alert: Alert) -> str | None:
        """Write and publish one alert; its IVORN when every output took it, else None."""
        with self._lock:
            try:
                if (isinstance(alert, FollowupAlert) and alert.classification_ivorn is None
                        and alert.object_id in self._cls_ivorn):
                    alert = replace(alert, classification_ivorn=self._cls_ivorn[alert.object_id])
                name = ivorn(alert, self.stream)
                xml = to_voevent(alert, self.stream, self.role, self.sites)
                record = to_record(alert, self.stream, self.role)
                packet = encode_record(record)
            except Exception as exc:  # a bad alert must not stop the night
                self._fail("invalid", getattr(alert, "object_id", "?"), exc)
                self.failed += 1
                return None
            ok = True
            if self.out_dir is not None:
                ok &= self._try("voevent_file", name, self._write_voevent, alert, xml)
                ok &= self._try("avro_file", name, self._append_avro, alert, record)
            if self.publish is not None:
                body = {"name": "alert", "data": {
                    "kind": alert.kind, "ivorn": name, "schema_version": SCHEMA_VERSION,
                    "object_id": alert.object_id, "predicted_class": alert.predicted_class,
                    "p_predicted": alert.p_predicted, "voevent": xml.decode(),
                    "avro": packet}}
                if isinstance(alert, FollowupAlert):
                    body["data"]["target_id"] = alert.target_id
                ok &= self._try("publish", name, self.publish, self.topic, "EVENT", body)
            if isinstance(alert, ClassificationAlert):
                self._cls_ivorn[alert.object_id] = name
                self._cls_ivorn.move_to_end(alert.object_id)
                while len(self._cls_ivorn) > 200_000:
                    self._cls_ivorn.popitem(last=False)
            if ok:
                self.emitted += 1
                self.by_kind[alert.kind] += 1
                return name
            self.failed += 1
            return None

    def _try(self, what: str, name: str, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # OSError above all: a full disk must not stop the night
            self._fail(what, name, exc)
            return False

    def _fail(self, what: str, name: str, exc: Exception) -> None:
        self.errors[what] += 1
        n = self.errors[what]
        if n <= 10 or n % 100 == 0:
            log.warning("alert %s: %s failed (%d so far): %s: %s", name, what, n,
                        type(exc).__name__, exc)

    def _write_voevent(self, alert: Alert, xml: bytes) -> None:
        d = self.out_dir / "voevent"
        d.mkdir(parents=True, exist_ok=True)
        path = d / (alert.local_id.replace("/", "_") + ".xml")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(xml)
        os.replace(tmp, path)

    def _append_avro(self, alert: Alert, record: dict) -> None:
        path = (self.out_dir / "avro" / f"{alert.kind}-{_utc(alert.t):%Y%m%d}"
                f"-v{SCHEMA_VERSION}.avro")
        entry = self._writers.get(path)
        if entry is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                _prepare_container(path)
            while len(self._writers) >= 4:  # yesterday's files
                self._close(next(iter(self._writers)))
            fo = open(path, "a+b")  # kept open across emits
            try:
                entry = fo, Writer(fo, SCHEMA, metadata={
                    "sitian.schema_version": str(SCHEMA_VERSION),
                    "sitian.schema_fingerprint": FINGERPRINT.hex(),
                    "sitian.stream": self.stream})
            except Exception:
                fo.close()
                raise
            self._writers[path] = entry
        fo, writer = entry
        try:
            writer.write(record)
            writer.flush()  # one block per alert, on disk before emit returns
        except Exception:
            self._close(path)  # reopened (and its tail cut) on the next alert
            raise

    def _close(self, path: Path) -> None:
        fo, writer = self._writers.pop(path)
        try:
            writer.flush()
        except Exception:  # the file is cut to its last block when reopened
            pass
        finally:
            fo.close()

    def close(self) -> None:
        with self._lock:
            for path in list(self._writers):
                self._close(path)


def decode_feed_alert(frames: list[bytes]) -> FeedAlert | None:
    """Read an alert off the PUB feed (the two frames of one message); None for any
    other feed message. ValueError when it is an alert but a malformed one."""

    if len(frames) != 2:
        return None
    try:
        env = msgpack.unpackb(frames[1], raw=False)
    except Exception:
        return None
    if not isinstance(env, dict):
        return None
    body = env.get("body")
    if not (env.get("type") == "EVENT" and isinstance(body, dict)
            and body.get("name") == "alert"):
        return None
    try:
        msg = P.decode([P.MAGIC, frames[1]], frozenset({"EVENT"}))
    except P.ProtocolError as exc:
        raise ValueError(f"bad alert envelope: {exc}") from None
    data = msg.body["data"]
    if not (isinstance(data.get("voevent"), str) and isinstance(data.get("avro"), bytes)):
        raise ValueError("an alert carries voevent (str) and avro (bytes)")
    record = read_avro(data["avro"])
    if record["ivorn"] != data.get("ivorn"):
        raise ValueError(f"alert ivorn {data.get('ivorn')!r} disagrees with its Avro "
                         f"record ({record['ivorn']!r})")
    return FeedAlert(msg.t, record["kind"], record["ivorn"], data["voevent"].encode(), record)
