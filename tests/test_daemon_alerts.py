"""The daemon announces classifications and follow-up triggers (brain.ops.alerts) on its
real PUB feed and in its alerts directory: only new, likely, transient classes."""

from __future__ import annotations

import time

import numpy as np
import zmq

from brain.config import load_config
from brain.core.association import DetectionBatch
from brain.ops import alerts as A
from brain.ops import voevent as V
from brain.shells.daemon import Daemon
from drivers.clock import WorldClock, parse_start
from tests.test_nightjobs import _port


def test_daemon_publishes_new_transient_classifications(tmp_path):
    config = load_config()
    pub = f"tcp://127.0.0.1:{_port()}"
    t = parse_start("2026-12-15T15:00:00")
    d = Daemon(config, tmp_path / "journal.sqlite", WorldClock(t, 1.0),
               router=f"tcp://127.0.0.1:{_port()}", pub=pub)
    d.alerts = A.AlertSink(tmp_path / "alerts", publish=d.link.publish, role="test",
                           sites={s.id: s for s in config.sites})
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"brain")
    sub.setsockopt(zmq.RCVTIMEO, 2000)
    sub.connect(pub)
    try:
        time.sleep(0.3)  # the subscription reaches the PUB socket
        n = 4  # four objects, three detections each
        ra = np.repeat([10.0, 20.0, 30.0, 40.0], 3)
        dec = np.repeat([5.0, 6.0, 7.0, 8.0], 3)
        mjd = np.tile([61024.60, 61024.62, 61024.64], n)
        d.core.associator.add(DetectionBatch(ra, dec, mjd, np.tile([0, 1, 2], n),
                                             np.full(3 * n, 18.5), np.full(3 * n, 0.05)))
        cand = np.arange(n)
        classes = list(d.core.classifier.classes)
        prob = np.full((n, len(classes)), 0.01)
        prob[0, classes.index("KN")] = 0.9  # new, likely, transient: announced
        prob[1, [classes.index(c) for c in ("SNIa", "SNII", "CV")]] = (0.3, 0.25, 0.25)
        prob[2, classes.index("RRL")] = 0.9  # a variable star: not announced
        prob[3, classes.index("TDE")] = 0.8  # announced
        prob /= prob.sum(axis=1, keepdims=True)
        assert prob[1].max() < 0.5  # SNIa, not likely enough
        before = d._predicted(cand)
        assert (before == -1).all()
        d.core.obj_prob = np.zeros((n, len(classes)))
        d.core.finish_classification(t, cand, prob)
        d._alert_classified(t, cand, prob, before)
        assert len(d._alert_queue) == 2  # queued: the loop emits a few per turn
        while d._drain_alerts():
            pass
        got = [A.decode_feed_alert(sub.recv_multipart()) for _ in range(2)]
        assert sorted((g.kind, g.record["object_id"], g.record["predicted_class"])
                      for g in got) == [
            ("classification", "o0000000", "KN"), ("classification", "o0000003", "TDE")]
        for g in got:
            V.validate_voevent(g.voevent)
        # The same answer again: nothing new, nothing announced.
        d._alert_classified(t + 1800, cand, prob, d._predicted(cand))
        assert not d._alert_queue
        sub.setsockopt(zmq.RCVTIMEO, 300)
        try:
            extra = sub.recv_multipart()
        except zmq.Again:
            extra = None
        assert extra is None
        files = sorted(p.name for p in (tmp_path / "alerts" / "voevent").iterdir())
        assert len(files) == 2 and all(f.startswith("cls_o") for f in files)
        assert d.alerts.emitted == 2 and d.alerts.failed == 0
    finally:
        sub.close(0)
        d.close()
