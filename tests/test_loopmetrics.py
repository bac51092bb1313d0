"""The loop's plain counters and histograms, as Prometheus reads them (drivers.loopmetrics).

The exposition is parsed with prometheus_client's own parser, so what is asserted is
what a Prometheus server would store.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from brain.ops.prometheus import MetricsServer
from drivers.loopmetrics import LoopCollector, LoopCounter, LoopHistogram


def samples(registry) -> dict:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_export_preset_series_at_zero_and_their_increments():
    reg = CollectorRegistry()
    c = LoopCounter("x_vetoes_total", "vetoes", ("rule",), [("rain",), ("wind",)])
    plain = LoopCounter("x_visits_total", "visits")
    reg.register(LoopCollector([c, plain]))
    c.inc("rain")
    c.inc("rain", n=2.0)
    c.inc("sun")  # a label not preset appears when first counted
    plain.inc()
    s = samples(reg)
    assert s[("x_vetoes_total", (("rule", "rain"),))] == 3.0
    assert s[("x_vetoes_total", (("rule", "wind"),))] == 0.0
    assert s[("x_vetoes_total", (("rule", "sun"),))] == 1.0
    assert s[("x_visits_total", ())] == 1.0
    assert not any(name.endswith("_created") for name, _ in s)  # no noise series


def test_histogram_buckets_are_cumulative_and_count_equals_the_inf_bucket():
    reg = CollectorRegistry()
    h = LoopHistogram("x_latency_seconds", "latency", (0.01, 0.1, 1.0), ("name",))
    reg.register(LoopCollector([h]))
    for v in (0.005, 0.01, 0.05, 0.5, 7.0):  # 0.01 sits on a bound: le is inclusive
        h.observe(v, "slew")
    h.observe(0.2, "expose")
    s = samples(reg)

    def b(name, le):
        return s[("x_latency_seconds_bucket", (("le", le), ("name", name)))]

    assert [b("slew", le) for le in ("0.01", "0.1", "1.0", "+Inf")] == [2, 3, 4, 5]
    assert s[("x_latency_seconds_count", (("name", "slew"),))] == 5
    assert s[("x_latency_seconds_sum", (("name", "slew"),))] == pytest.approx(7.565)
    assert b("expose", "0.1") == 0 and b("expose", "1.0") == 1
    assert h.count("slew") == 5 and h.count("park") == 0


def test_scrapes_while_the_loop_counts_never_see_a_torn_histogram():
    # The loop thread observes while another thread scrapes, with no lock between them:
    # every scrape must still be a consistent histogram (cumulative, count = +Inf).
    reg = CollectorRegistry()
    h = LoopHistogram("x_lag_seconds", "lag", (0.001, 0.01, 0.1))
    reg.register(LoopCollector([h]))
    stop = threading.Event()

    def loop():
        i = 0
        while not stop.is_set():
            h.observe((i % 7) * 0.003)
            i += 1

    t = threading.Thread(target=loop)
    t.start()
    try:
        for _ in range(200):
            s = samples(reg)
            buckets = [s[("x_lag_seconds_bucket", (("le", le),))]
                       for le in ("0.001", "0.01", "0.1", "+Inf")]
            assert buckets == sorted(buckets)
            assert s[("x_lag_seconds_count", ())] == buckets[-1]
    finally:
        stop.set()
        t.join()
    assert h.count() > 0


def test_metrics_server_answers_and_frees_its_port_on_close():
    reg = CollectorRegistry()
    c = LoopCounter("x_turns_total", "turns")
    reg.register(LoopCollector([c]))
    c.inc(n=5)
    srv = MetricsServer(reg, 0)
    url = f"http://127.0.0.1:{srv.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert "x_turns_total 5.0" in r.read().decode()
    srv.close()
    assert srv.scrapes == 1 and srv.cpu_s > 0  # what the daemon logs at close
    assert not srv.thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)
    again = MetricsServer(reg, srv.port)  # the port is free again at once
    again.close()


def test_stalled_client_is_cut_off_and_the_next_scrape_is_answered():
    # One thread serves the scrapes: a client that connects and says nothing must not
    # hold /metrics hostage for longer than the request timeout.
    import socket
    import time

    class Quick(MetricsServer):
        REQUEST_TIMEOUT_S = 0.5

    reg = CollectorRegistry()
    reg.register(LoopCollector([LoopCounter("x_up_total", "up")]))
    srv = Quick(reg, 0)
    try:
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as r:
            assert r.status == 200 and b"x_up_total 0.0" in r.read()
        assert time.monotonic() - t0 < 3.0
        stalled.close()
        with pytest.raises(urllib.error.HTTPError) as e:  # only /metrics (and /)
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/other", timeout=5)
        assert e.value.code == 404
    finally:
        srv.close()


def test_a_stalled_scrape_does_not_delay_the_others():
    # With the deployed 10 s deadline (Prometheus's default scrape timeout), a client
    # that sends half a request and stalls must not hold up the other scrapers.
    import socket
    import time

    reg = CollectorRegistry()
    reg.register(LoopCollector([LoopCounter("x_up_total", "up")]))
    srv = MetricsServer(reg, 0)
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    try:
        stalled.sendall(b"GET /metrics HTTP/1.1\r\nHost: brain\r\n")  # no blank line
        time.sleep(0.2)  # a worker is waiting for the rest
        for _ in range(3):
            t0 = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics",
                                        timeout=5) as r:
                assert r.status == 200 and b"x_up_total 0.0" in r.read()
            assert time.monotonic() - t0 < 2.0
        assert srv.scrapes == 3
    finally:
        stalled.close()
        srv.close()


def test_a_trickling_client_is_cut_off_at_its_deadline_and_a_full_house_refused():
    # A byte every 0.2 s never trips a per-read timeout; the per-connection deadline cuts
    # it off. While every worker is held, a new connection is closed at once.
    import socket
    import time

    class Small(MetricsServer):
        REQUEST_TIMEOUT_S = 1.0
        WORKERS = 2

    reg = CollectorRegistry()
    reg.register(LoopCollector([LoopCounter("x_up_total", "up")]))
    srv = Small(reg, 0)
    slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
    try:
        time.sleep(0.2)  # both workers hold one
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        assert extra.recv(1) == b""  # closed by the server, not left waiting
        extra.close()
        t0 = time.monotonic()
        cut = [False, False]
        while not all(cut) and time.monotonic() - t0 < 5:
            for k, c in enumerate(slow):
                if not cut[k]:
                    try:
                        c.sendall(b"X")
                    except OSError:  # reset or closed by the server
                        cut[k] = True
            time.sleep(0.2)
        assert all(cut) and time.monotonic() - t0 < 3.0
        assert srv.cut_off == 2 and srv.refused == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as r:
            assert r.status == 200  # the workers are free again
    finally:
        for c in slow:
            c.close()
        srv.close()


def test_text_encoding_reads_back_as_prometheus_clients_own():
    # The daemon's fast encoder against prometheus_client's generate_latest, parsed by
    # prometheus_client's parser: the same samples, with awkward label values and docs.
    from prometheus_client import Gauge

    from drivers.loopmetrics import CONTENT_TYPE, encode_text

    reg = CollectorRegistry()
    Gauge("x_build_info", "build", ["version"], registry=reg).labels('1"x\\y\nz').set(1)
    c = LoopCounter("x_jobs_total", "jobs\nby kind", ("kind",), [("dusk",), ("dawn",)])
    c.inc("dusk", n=3)
    h = LoopHistogram("x_wait_seconds", "wait", (0.001, 0.5, 1e6), ("name",))
    for v in (0.2, 2e6, float("inf")):
        h.observe(v, "slew")
    reg.register(LoopCollector([c, h]))

    def parsed(text: bytes):
        return sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                      for f in text_string_to_metric_families(text.decode())
                      for s in f.samples if not s.name.endswith("_created"))

    ours = encode_text(reg)
    assert parsed(ours) == parsed(generate_latest(reg))
    assert b'le="1e+06"' in ours and b"x_wait_seconds_sum{name=\"slew\"} +Inf" in ours
    assert "version=0.0.4" in CONTENT_TYPE
