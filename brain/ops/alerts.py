"""Alerts: classifications and follow-up triggers as VOEvent 2.0 and Avro packets.

Two alert kinds leave the brain (docs/alerts.md):

* :class:`ClassificationAlert` — a candidate's class probabilities after the core
  classified it (``BrainCore.finish_classification``);
* :class:`FollowupAlert` — a spectrum the follow-up manager commanded
  (``FollowupManager.act``: the ``spectrum`` command and its ``FollowupRecord``).

Each is written as an IVOA VOEvent 2.0 packet (:func:`to_voevent`, validated against the
VOEvent 2.0 XSD before it is returned) and as an Avro record of the versioned schema in
``brain/schemas/sitian_alert_v<N>.avsc`` (:func:`to_avro`: Avro single-object encoding,
the schema's CRC-64-AVRO fingerprint in front). :class:`AlertSink` writes both to a
directory and publishes them on the PUB feed; :func:`decode_feed_alert` reads one back.
Inputs are plain values, so the module knows nothing of the daemon or the core.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from fastavro.write import Writer

from brain.ops.alert_records import (
    DEFAULT_STREAM,
    ROLES,
    Alert,
    ClassificationAlert,
    FollowupAlert,
    ivorn,
    utc_datetime,
)
from brain.ops.avro import (
    FINGERPRINT,
    SCHEMA,
    SCHEMA_VERSION,
    encode_record,
    prepare_container,
    read_avro,
    to_record,
)
from brain.ops.voevent import to_voevent
from drivers import protocol as P
from observatory.times import mjd_to_unix

log = logging.getLogger("brain.ops.alerts")


# Building alerts from what the core holds ---------------------------------------------
def classification_alerts(t: float, object_ids, prob, classes, associator,
                          bands=("g", "r", "i"), pos_err_arcsec: float = 1.0
                          ) -> list[ClassificationAlert]:
    """Alerts for the objects a classification job just classified.

    ``object_ids``/``prob``: the job's answer (``cand``, ``prob`` of
    ``BrainCore.finish_classification``); ``classes``: the classifier's class names;
    ``associator``: ``brain.core.association.Associator`` (``object_ids`` are its
    catalogue rows; band codes index ``bands``). First and last seen are the whole
    history's; the latest magnitudes, the active window's."""
    ids = np.asarray(object_ids, dtype=np.int64)
    prob = np.asarray(prob, dtype=float)
    if ids.size == 0:
        return []
    order = np.argsort(ids, kind="stable")
    ids, prob = ids[order], prob[order]
    obj, _mjd, band, mag, _err = associator.light_curves(ids)
    local = np.searchsorted(ids, obj)
    n, nb = ids.size, len(bands)
    first = associator.first_mjd[ids].astype(float)
    last = associator.last_mjd[ids].astype(float)
    latest = np.full((n, nb), -1)  # rows are sorted by time within each object
    ok = (band >= 0) & (band < nb)
    np.maximum.at(latest, (local[ok], band[ok].astype(np.int64)), np.flatnonzero(ok))
    ndet = associator.n_detections()[ids]
    ra, dec = associator.ra[ids], associator.dec[ids]
    names = associator.ids[ids]
    def to_unix(m: float) -> float | None:
        return float(mjd_to_unix(m)) if math.isfinite(m) else None

    out = []
    for k in range(n):
        out.append(ClassificationAlert(
            f"o{int(names[k]):07d}", t, float(ra[k]), float(dec[k]),
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
        path = (self.out_dir / "avro" / f"{alert.kind}-{utc_datetime(alert.t):%Y%m%d}"
                f"-v{SCHEMA_VERSION}.avro")
        entry = self._writers.get(path)
        if entry is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                prepare_container(path)
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
