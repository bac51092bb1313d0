"""Alerts (brain.ops.alerts): VOEvent 2.0 packets against the official XSD, Avro
single-object packets and container files, and the sink's files and PUB feed."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from datetime import UTC, datetime

import fastavro
import msgpack
import numpy as np
import pytest
import voeventparse as vp
import zmq
from fastavro.schema import fingerprint, to_parsing_canonical_form
from lxml import etree

from brain.core.association import Associator, DetectionBatch
from brain.core.events import Command
from brain.core.followup import FollowupRecord
from brain.ops import alert_records as R
from brain.ops import alerts as A
from brain.ops import avro as AV
from brain.ops import voevent as V
from drivers import protocol as P
from drivers.link import BrainLink
from observatory.taxonomy import CLASSES

T0 = 1797350400.25  # 2026-12-15T16:00:00.25 UTC
SITES = {"xl": (40.3958, 117.5775, 950.0)}
V1_FINGERPRINT = "715801ab27fc4587"  # sitian_alert_v1.avsc; a shipped schema never changes


def probs(seed: int) -> dict[str, float]:
    p = np.random.default_rng(seed).dirichlet(np.ones(len(CLASSES)))
    return dict(zip(CLASSES, p.tolist(), strict=True))


def cls_alert(seed: int = 1, **kw) -> R.ClassificationAlert:
    args = dict(object_id="o0001234", t=T0, ra_deg=123.456789, dec_deg=-12.5,
                probabilities=probs(seed), n_detections=7, t_first=T0 - 86400.5,
                t_last=T0 - 600.125, last_mag={"g": 19.12, "r": 18.93, "i": 18.71},
                pos_err_arcsec=0.7)
    args.update(kw)
    return R.ClassificationAlert(**args)


def fu_alert(**kw) -> R.FollowupAlert:
    args = dict(target_id="xl.spec-000003", object_id="o0001234", t=T0 + 100.0,
                ra_deg=123.456789, dec_deg=-12.5, telescope="xl.spec",
                predicted_class="KN", p_predicted=0.61, mag=18.93, exposure_s=625.4,
                t_end=T0 + 1100.0, priority=31.2, probabilities=probs(2))
    args.update(kw)
    return R.FollowupAlert(**args)


def official_valid(xml: bytes) -> bool:
    """voeventparse's own VOEvent 2.0 XSD instance, independent of brain.ops.alerts."""
    return vp.voevent_v2_0_schema.validate(etree.fromstring(xml))


# VOEvent ------------------------------------------------------------------------------
def test_classification_voevent_is_valid_and_round_trips():
    a = cls_alert()
    xml = V.to_voevent(a)
    assert official_valid(xml)
    v = vp.loads(xml)
    assert vp.valid_as_v2_0(v)
    assert v.attrib["ivorn"] == "ivo://sitian.cn/brain#cls/o0001234/20261215T160000.250"
    assert v.attrib["role"] == "observation"
    pos = vp.get_event_position(v)
    assert (pos.ra, pos.dec, pos.units, pos.system) == (a.ra_deg, a.dec_deg, "deg",
                                                        "UTC-ICRS-TOPO")
    assert pos.err == pytest.approx(0.7 / 3600)
    when = vp.get_event_time_as_utc(v)
    assert when.timestamp() == pytest.approx(a.t_last, abs=1e-6)  # latest detection
    assert str(v.Who.Date) == "2026-12-15T16:00:00+00:00"
    top = vp.get_toplevel_params(v)
    assert top["object_id"]["value"] == "o0001234"
    assert top["predicted_class"]["value"] == a.predicted_class == max(a.probabilities,
                                                                       key=a.probabilities.get)
    assert int(top["n_detections"]["value"]) == 7
    assert float(top["last_detection_mjd"]["value"]) == pytest.approx(
        a.t_last / 86400 + 40587, abs=1e-9)
    groups = vp.get_grouped_params(v)
    got = {k: float(p["value"]) for k, p in groups["class_probabilities"].items()}
    assert got == a.probabilities  # exact: floats are written in their shortest exact form
    assert all(p["ucd"] == "stat.probability" for p in groups["class_probabilities"].values())
    assert {k: float(p["value"]) for k, p in groups["last_mag"].items()} == {
        "mag_g": 19.12, "mag_r": 18.93, "mag_i": 18.71}
    (inf,) = v.Why.Inference
    assert str(inf.Name) == a.predicted_class
    assert float(inf.attrib["probability"]) == a.p_predicted
    assert str(inf.Concept) == "ivo://sitian.cn/taxonomy#" + a.predicted_class
    assert v.WhereWhen.ObsDataLocation.ObservatoryLocation.attrib["id"] == "GEOSURFACE"


def test_followup_voevent_is_valid_with_site_and_citation():
    a = fu_alert(classification_ivorn=R.ivorn(cls_alert()))
    xml = V.to_voevent(a, role="test", sites=SITES)
    assert official_valid(xml)
    v = vp.loads(xml)
    assert v.attrib["role"] == "test"
    assert v.attrib["ivorn"].startswith("ivo://sitian.cn/brain#fu/xl.spec-000003/")
    top = vp.get_toplevel_params(v)
    assert top["target_id"]["value"] == "xl.spec-000003"
    assert top["telescope"]["value"] == "xl.spec"
    assert top["predicted_class"]["value"] == "KN"
    assert float(top["p_predicted"]["value"]) == 0.61
    assert float(top["mag"]["value"]) == 18.93 and top["mag"]["unit"] == "mag"
    assert float(top["exposure"]["value"]) == 625.4 and top["exposure"]["unit"] == "s"
    assert vp.get_event_time_as_utc(v).timestamp() == pytest.approx(a.t)
    obs = v.WhereWhen.ObsDataLocation.ObservatoryLocation
    assert obs.attrib["id"] == "xl"
    c = obs.AstroCoords.Position3D.Value3
    assert (float(c.C1), float(c.C2), float(c.C3)) == (117.5775, 40.3958, 950.0)
    cite = v.Citations.EventIVORN
    assert cite.attrib["cite"] == "followup" and str(cite) == R.ivorn(cls_alert())
    assert str(v.Why.Inference.Name) == "KN"


def test_a_followup_without_site_or_probabilities_is_still_valid():
    a = fu_alert(probabilities={}, mag=None, exposure_s=None, t_end=None, priority=None)
    xml = V.to_voevent(a)  # no sites given: GEOSURFACE
    assert official_valid(xml)
    assert not vp.get_grouped_params(vp.loads(xml))


def test_invalid_packets_fail_validation_with_a_clear_error():
    xml = V.to_voevent(cls_alert())
    bad_role = xml.replace(b'role="observation"', b'role="rumour"')
    assert not official_valid(bad_role)
    with pytest.raises(ValueError, match=r"not a valid VOEvent 2\.0 packet: line \d+: .*role"):
        V.validate_voevent(bad_role)
    root = etree.fromstring(xml)
    odl = root.find("WhereWhen/ObsDataLocation")
    odl.remove(odl.find("ObservationLocation"))
    missing = etree.tostring(root)
    assert not official_valid(missing)
    with pytest.raises(ValueError, match="ObservationLocation"):
        V.validate_voevent(missing)
    with pytest.raises(ValueError, match="not well-formed"):
        V.validate_voevent(xml[:-20])
    with pytest.raises(ValueError, match="role"):  # to_voevent checks before returning
        V.to_voevent(cls_alert(), role="rumour")


@pytest.mark.parametrize("bad, match", [
    (dict(ra_deg=math.nan), "ra_deg must be finite"),
    (dict(dec_deg=95.0), "dec_deg"),
    (dict(object_id="o 12"), "object_id"),
    (dict(probabilities={"SNIa": 0.5, "SNII": 0.2}), "sum to"),
    (dict(probabilities={"SNIa": 1.5, "SNII": -0.5}), "outside"),
    (dict(probabilities={}), "needs class probabilities"),
])
def test_bad_classification_values_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        cls_alert(**bad)


def test_bad_followup_values_are_refused():
    with pytest.raises(ValueError, match="p_predicted"):
        fu_alert(p_predicted=1.2)
    with pytest.raises(ValueError, match="telescope"):
        fu_alert(telescope="xl spec")
    assert fu_alert(ra_deg=360.0).ra_deg == 0.0  # wrapped
    assert fu_alert(mag=math.nan).mag is None  # a restored record's unknown magnitude


# Avro --------------------------------------------------------------------------------
def test_the_shipped_schema_is_pinned_and_versioned():
    path = AV.SCHEMA_DIR / "sitian_alert_v1.avsc"
    schema = fastavro.parse_schema(json.loads(path.read_text()))
    fp = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    assert fp == V1_FINGERPRINT, ("sitian_alert_v1.avsc changed: a shipped schema is "
                                  "frozen; add sitian_alert_v2.avsc (docs/alerts.md)")
    for version, s in AV.SCHEMAS.items():
        (f,) = [f for f in s["fields"] if f["name"] == "schema_version"]
        assert f["default"] == version
    assert AV.SCHEMA_VERSION == max(AV.SCHEMAS)


@pytest.mark.parametrize("make", [cls_alert, fu_alert])
def test_avro_single_object_packets_round_trip_exactly(make):
    a = make()
    packet = AV.to_avro(a, role="test")
    assert packet[:2] == b"\xc3\x01"
    assert packet[2:10].hex() == V1_FINGERPRINT  # little-endian CRC-64-AVRO, as fastavro
    rec = AV.read_avro(packet)
    assert rec == AV.to_record(a, role="test")
    assert rec["schema_version"] == 1 and rec["kind"] == a.kind and rec["role"] == "test"
    assert rec["ra_deg"] == a.ra_deg and rec["t_unix"] == a.t
    assert rec["probabilities"] == a.probabilities
    # An independent decoder: fastavro's schemaless reader on the body.
    assert fastavro.schemaless_reader(io.BytesIO(packet[10:]), AV.SCHEMA) == rec


def test_bad_avro_packets_are_rejected_clearly():
    packet = AV.to_avro(cls_alert())
    with pytest.raises(ValueError, match="unknown Avro schema fingerprint 0000000000000000"):
        AV.read_avro(packet[:2] + bytes(8) + packet[10:])
    with pytest.raises(ValueError, match="C3 01 marker"):
        AV.read_avro(b"\xc3\x02" + packet[2:])
    with pytest.raises(ValueError, match="C3 01 marker"):
        AV.read_avro(packet[:6])
    with pytest.raises(ValueError, match="bad Avro alert body"):
        AV.read_avro(packet[:40])
    with pytest.raises(ValueError, match="stray bytes"):
        AV.read_avro(packet + b"\x00")


# From the core's state ------------------------------------------------------------------
def test_classification_alerts_from_the_associator():
    rng = np.random.default_rng(3)
    assoc = Associator(2.0)
    ra = np.array([10.0, 10.0, 10.0, 200.0, 200.0, 200.0, 10.0])
    dec = np.array([5.0, 5.0, 5.0, -30.0, -30.0, -30.0, 5.0])
    mjd = np.array([61000.1, 61000.1, 61000.2, 61000.3, 61000.3, 61000.3, 61001.0])
    band = np.array([0, 1, 1, 0, 1, 2, 0])
    mag = np.array([19.0, 18.5, 18.4, 20.0, 19.8, 19.6, 18.8])
    assoc.add(DetectionBatch(ra + rng.normal(0, 1e-5, 7), dec, mjd, band, mag,
                             np.full(7, 0.05)))
    assert assoc.n_objects == 2
    prob = rng.dirichlet(np.ones(len(CLASSES)), size=2)
    out = A.classification_alerts(T0, np.array([1, 0]), prob[::-1], CLASSES, assoc)
    a0, a1 = out  # sorted by object id
    assert (a0.object_id, a1.object_id) == ("o0000000", "o0000001")
    assert a0.n_detections == 4 and a1.n_detections == 3
    assert a0.last_mag == pytest.approx({"g": 18.8, "r": 18.4})
    assert a1.last_mag == pytest.approx({"g": 20.0, "r": 19.8, "i": 19.6})
    assert a0.t_first == pytest.approx((61000.1 - 40587) * 86400)
    assert a0.t_last == pytest.approx((61001.0 - 40587) * 86400)
    assert a0.probabilities == dict(zip(CLASSES, prob[0].tolist(), strict=True))
    assert a1.ra_deg == pytest.approx(200.0) and a1.dec_deg == pytest.approx(-30.0)
    assert all(official_valid(V.to_voevent(a)) for a in out)
    assert A.classification_alerts(T0, np.zeros(0, dtype=int), np.zeros((0, 14)), CLASSES,
                                    assoc) == []


def test_followup_alert_from_the_spectrum_command_and_record():
    cmd = Command("lh.spec", "spectrum", {"ra_deg": 50.5, "dec_deg": 20.25, "seconds": 900.0,
                                          "target_id": "lh.spec-000007",
                                          "object_id": "o0000042"})
    rec = FollowupRecord("lh.spec-000007", 42, "lh.spec", T0, T0, T0 + 1500.0, 19.4, "TDE",
                         0.72)
    a = A.followup_alert(cmd, rec, priority=14.4)
    assert (a.target_id, a.object_id, a.telescope, a.site) == ("lh.spec-000007", "o0000042",
                                                               "lh.spec", "lh")
    assert (a.t, a.t_end, a.exposure_s, a.mag) == (T0, T0 + 1500.0, 900.0, 19.4)
    assert (a.predicted_class, a.p_predicted, a.priority) == ("TDE", 0.72, 14.4)


# The sink ----------------------------------------------------------------------------------
def recv_until(sub, want: int, timeout_s: float = 5.0) -> list[list[bytes]]:
    got, t_end = [], time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < t_end:
        if sub.poll(50):
            got.append(sub.recv_multipart())
    return got


def test_sink_writes_files_and_publishes_on_a_real_pub_feed(tmp_path):
    ctx = zmq.Context()
    link = BrainLink({}, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"brain")
    sub.connect(link.pub_endpoint)
    try:
        # The slow joiner: probe until the subscription is in place.
        t_end = time.monotonic() + 5
        while not sub.poll(20) and time.monotonic() < t_end:
            link.publish("brain", "EVENT", {"name": "probe", "data": {}})
        assert A.decode_feed_alert(sub.recv_multipart()) is None  # not an alert
        while sub.poll(100):
            sub.recv_multipart()
        sink = A.AlertSink(tmp_path, link.publish, role="test", sites=SITES)
        c, f = cls_alert(), fu_alert()
        assert sink.emit(c) == R.ivorn(c)
        assert sink.emit(f) == R.ivorn(f)
        assert (sink.emitted, sink.failed, sink.by_kind) == (2, 0, {"classification": 1,
                                                                     "followup": 1})
        msgs = recv_until(sub, 2)
    finally:
        sub.close()
        link.close()
        ctx.term()
    assert len(msgs) == 2
    for frames, a in zip(msgs, (c, f), strict=True):
        assert frames[0] == b"brain"
        msg = P.decode([P.MAGIC, frames[1]], P.FROM_DEVICE)  # the protocol's own decoder
        assert msg.type == "EVENT" and msg.body["name"] == "alert"
        data = msg.body["data"]
        assert (data["kind"], data["ivorn"], data["schema_version"]) == (a.kind, R.ivorn(a), 1)
        assert isinstance(data["avro"], bytes) and official_valid(data["voevent"].encode())
        feed = A.decode_feed_alert(frames)
        assert (feed.kind, feed.ivorn) == (a.kind, R.ivorn(a))
        assert feed.record["object_id"] == a.object_id
        assert feed.record["probabilities"] == a.probabilities
        assert abs(feed.t - time.time()) < 60  # the link's clock stamps the envelope
    # The follow-up cites the classification the sink sent for its object.
    feed = A.decode_feed_alert(msgs[1])
    assert feed.record["followup"]["classification_ivorn"] == R.ivorn(c)
    assert vp.loads(feed.voevent).Citations.EventIVORN == R.ivorn(c)
    sink.close()
    # Files: one VOEvent each, one container per kind and UTC date.
    xmls = sorted((tmp_path / "voevent").iterdir())
    assert [p.name for p in xmls] == ["cls_o0001234_20261215T160000.250.xml",
                                      "fu_xl.spec-000003_20261215T160140.250.xml"]
    assert all(official_valid(p.read_bytes()) for p in xmls)
    for a in (c, f):
        path = tmp_path / "avro" / f"{a.kind}-20261215-v1.avro"
        with open(path, "rb") as fo:
            r = fastavro.reader(fo)
            assert r.metadata["sitian.schema_version"] == "1"
            assert r.metadata["sitian.schema_fingerprint"] == V1_FINGERPRINT
            (rec,) = list(r)
        assert rec["schema_version"] == 1 and rec["ivorn"] == R.ivorn(a)
        assert rec["role"] == "test"


def test_container_survives_a_crash_mid_append(tmp_path):
    sink = A.AlertSink(tmp_path, None)
    for k in range(3):
        sink.emit(cls_alert(seed=k, t=T0 + k))
    sink.close()
    path = tmp_path / "avro" / "classification-20261215-v1.avro"
    with open(path, "ab") as fo:  # a block half-written when the process died
        fo.write(b"\x02\x90\x03partial")
    with pytest.raises(Exception):  # noqa: B017 - fastavro's own error for a torn block
        list(fastavro.reader(open(path, "rb")))
    sink = A.AlertSink(tmp_path, None)  # the restarted daemon
    sink.emit(cls_alert(seed=9, t=T0 + 9))
    sink.close()
    with open(path, "rb") as fo:
        recs = list(fastavro.reader(fo))
    assert [r["t_unix"] for r in recs] == [T0, T0 + 1, T0 + 2, T0 + 9]
    (path.parent / "followup-20261215-v1.avro").write_bytes(b"not avro")
    sink = A.AlertSink(tmp_path, None)
    assert sink.emit(fu_alert())
    sink.close()
    assert len(list(fastavro.reader(open(path.parent / "followup-20261215-v1.avro", "rb")))) == 1
    assert list(path.parent.glob("followup-20261215-v1.avro.bad-*"))


def test_unwritable_directory_is_logged_and_counted_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the alert directory should be")
    sent = []
    sink = A.AlertSink(blocker / "alerts", lambda *m: sent.append(m))
    with caplog.at_level(logging.WARNING, logger="brain.ops.alerts"):
        assert sink.emit(cls_alert()) is None
        assert sink.emit(fu_alert()) is None
    assert (sink.emitted, sink.failed) == (0, 2)
    assert sink.errors == {"voevent_file": 2, "avro_file": 2}
    assert len(sent) == 2  # the feed still got them
    assert len(caplog.records) == 4 and all("failed" in r.getMessage()
                                            for r in caplog.records)


def test_publish_errors_and_invalid_alerts_do_not_raise(tmp_path):
    def broken(*_):
        raise zmq.ZMQError(zmq.ENOTSOCK)

    sink = A.AlertSink(None, broken)
    assert sink.emit(cls_alert()) is None
    bad = cls_alert(probabilities={"SNIa": 0.5, "bad\x01name": 0.5})  # XML cannot carry it
    assert sink.emit(bad) is None
    assert sink.errors == {"publish": 1, "invalid": 1} and sink.failed == 2
    with pytest.raises(ValueError, match="role"):
        A.AlertSink(tmp_path, None, role="rumour")


def test_decode_feed_alert_refuses_a_tampered_alert():
    a = cls_alert()
    body = {"name": "alert", "data": {"kind": a.kind, "ivorn": "ivo://elsewhere#x",
                                      "voevent": V.to_voevent(a).decode(),
                                      "avro": AV.to_avro(a)}}
    frames = [b"brain", P.encode("EVENT", body, T0)[1]]
    with pytest.raises(ValueError, match="disagrees"):
        A.decode_feed_alert(frames)
    body["data"]["ivorn"] = R.ivorn(a)
    body["data"]["avro"] = b"\xc3\x01" + bytes(8)
    with pytest.raises(ValueError, match="fingerprint"):
        A.decode_feed_alert([b"brain", P.encode("EVENT", body, T0)[1]])
    assert A.decode_feed_alert([b"xl.wx", msgpack.packb([1, 2])]) is None


def test_ivorns_are_unique_per_alert_and_utc():
    a, b = cls_alert(t=T0), cls_alert(t=T0 + 0.001)
    assert R.ivorn(a) != R.ivorn(b)
    stamp = datetime.fromtimestamp(T0, UTC).strftime("%Y%m%dT%H%M%S")
    assert stamp in R.ivorn(a)
    assert R.ivorn(fu_alert(), "example.org/x") == (
        "ivo://example.org/x#fu/xl.spec-000003/20261215T160140.250")
