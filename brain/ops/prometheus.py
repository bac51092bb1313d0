"""The daemon's Prometheus metrics for the operators' dashboard (issue 7).

Names start with ``sitian_`` and use base units (docs/contracts.md). Every label set is
bounded by the configuration: devices (60), sites (3), groups (18), bands (3), command
names, safety rules, classes (14), follow-up results.

Cost (issue 7: under 2 % of the daemon's CPU; ``brain bench metrics`` measures it): the
event loop only adds to plain counters and histogram buckets (``drivers.loopmetrics``:
one dict or list operation each, not prometheus_client's labelled children). The state
(sites, weather, coverage, shutter, candidates) is read when Prometheus scrapes, on the
HTTP server's threads, by a collector that copies what it needs from the daemon. The
server (:class:`MetricsServer`) blocks until a request comes: no polling. The link's own metrics
(device up, heartbeat age, commands by name and result, command latency, protocol
errors) live in ``drivers.link.LinkMetrics`` on the same registry.

Metric list (besides the link's):

* ``sitian_build_info{version, python}`` = 1
* ``sitian_site_open{site}``, ``sitian_site_safe{site}``, ``sitian_site_dark{site}``,
  ``sitian_site_held_closed{site}`` (0/1); ``sitian_safety_vetoes_total{rule}``
* ``sitian_weather_wind_speed_meters_per_second{site}``, ``..._humidity_ratio``,
  ``..._cloud_cover_ratio``, ``..._seeing_arcseconds``, ``..._dew_margin_celsius``,
  ``..._rain`` (0/1), ``sitian_weather_age_seconds{site}`` (+Inf when never received);
  ``sitian_weather_rejected_total{site, field}``: reports with that field outside its
  physical range (brain.core.safety.WEATHER_RANGES; the site is unsafe until a valid one)
* ``sitian_exposures_total{band}``, ``sitian_visits_total``
* ``sitian_coverage_3band_square_degrees`` (distinct fields visited in all three bands in
  the last 30 world minutes, times the sky's area per field) and
  ``sitian_coverage_goal_square_degrees``
* ``sitian_open_shutter_ratio{group}``: the fraction of the last 30 world minutes its
  cameras' shutters were open; ``sitian_group_paused{group}``
* ``sitian_candidates`` (classified), ``sitian_classifications_total{class}``
* ``sitian_followups_total{result}`` (sent, done, failed), ``sitian_followup_reward_total``
  (the reward the spectra's own labels earn: the brain has no truth)
* ``sitian_scheduler_decision_seconds`` and ``sitian_event_loop_lag_seconds``
  (histograms), ``sitian_operator_actions_total{tool}``
* ``sitian_web_actions_total{result}`` (done, refused, unauthorized, bad_request,
  timeout): the operator web page's actions (brain.ops.webpage; with the page on)
"""

from __future__ import annotations

import io
import logging
import math
import platform
import queue
import socket
import threading
import time
from collections import deque
from importlib.metadata import version as v
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from brain.core.safety import WEATHER_RANGES, weather_verdict
from brain.planner.tools import TOOLS
from drivers.loopmetrics import LoopCollector, LoopCounter, LoopHistogram, wsgi_app
from observatory.sky import FULL_SKY_DEG2
from observatory.spectra import science_reward
from observatory.taxonomy import CLASSES

log = logging.getLogger("brain.ops.prometheus")

WINDOW_S = 1800.0
VETO_RULES = ("unknown_site", "weather_missing", "weather_stale", "weather_invalid",
              "station", "rain", "wind", "humidity", "sun", "altitude")  # BrainCore.guard's answers
WEATHER_FIELDS = (("wind_mps", "wind_speed_meters_per_second", "Wind speed"),
                  ("humidity", "humidity_ratio", "Relative humidity (0-1)"),
                  ("cloud", "cloud_cover_ratio", "Cloud cover (0-1)"),
                  ("seeing_arcsec", "seeing_arcseconds", "Seeing FWHM"),
                  ("dew_margin_c", "dew_margin_celsius", "Temperature above the dew point"))
LOOP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


def version() -> str:
    try:
        return v("sitian-brain")
    except Exception:  # not installed as a distribution (a source checkout)
        return "0+unknown"


class DaemonMetrics:
    """Counters the daemon bumps, and a collector that reads its state at scrape time."""

    def __init__(self, registry, daemon):
        self.d = daemon
        cfg = daemon.config
        self.visits: deque[tuple[float, int]] = deque()  # (t_start, field)
        self.exposures: deque[tuple[float, float, int]] = deque()  # (t0, t1, group)
        self._decisions_seen = 0
        self.goal_deg2 = float(cfg.ops.coverage_goal_deg2)
        self.field_deg2 = FULL_SKY_DEG2 / max(1, daemon.core.grid.size)
        self.classes = CLASSES
        Gauge("sitian_build_info", "Build of the running brain", ["version", "python"],
              registry=registry).labels(version(), platform.python_version()).set(1)
        # Every series of a bounded label set exists from the start (at 0).
        self.vetoes = LoopCounter("sitian_safety_vetoes_total",
                                  "Commands refused by a safety rule", ("rule",),
                                  [(r,) for r in VETO_RULES])
        self.exposures_total = LoopCounter("sitian_exposures_total",
                                           "Exposures journalled, by band", ("band",),
                                           [(b,) for b in cfg.camera.bands])
        self.visits_total = LoopCounter("sitian_visits_total",
                                        "Group visits (one field in all three bands)")
        self.classifications = LoopCounter("sitian_classifications_total",
                                           "Candidates classified, by predicted class",
                                           ("class",), [(c,) for c in CLASSES])
        self.followups = LoopCounter("sitian_followups_total",
                                     "Spectroscopic follow-ups by result (sent, done, failed)",
                                     ("result",), [("sent",), ("done",), ("failed",)])
        self.reward = LoopCounter("sitian_followup_reward_total",
                                  "Reward earned by the spectra, as their labels tell it")
        self.actions = LoopCounter("sitian_operator_actions_total",
                                   "Operator actions carried out, by tool", ("tool",),
                                   [(n,) for n, t in TOOLS.items() if t.moves_hardware])
        self.night_jobs = LoopCounter(
            "sitian_night_jobs_total", "Night jobs (dusk, dawn, report, retrain) by result",
            ("kind", "result"), [(k, r) for k in ("dusk", "dawn", "report", "retrain")
                                 for r in ("done", "skipped", "missed", "failed",
                                           "duplicate")])
        self.alerts = LoopCounter("sitian_alerts_total",
                                  "Alerts (VOEvent + Avro) by kind and result",
                                  ("kind", "result"),
                                  [(k, r) for k in ("classification", "followup")
                                   for r in ("emitted", "failed")])
        self.loop_lag = LoopHistogram("sitian_event_loop_lag_seconds",
                                      "Duration of one event-loop turn: the longest an "
                                      "arriving message waits", LOOP_BUCKETS)
        self.decision = LoopHistogram("sitian_scheduler_decision_seconds",
                                      "Time the survey scheduler takes to choose a field",
                                      DECISION_BUCKETS)
        registry.register(LoopCollector(
            [self.vetoes, self.exposures_total, self.visits_total, self.classifications,
             self.followups, self.reward, self.actions, self.night_jobs, self.alerts,
             self.loop_lag, self.decision], extra=_StateCollector(self).collect))

    # Hooks on the loop (cheap: no lock, no call below them) -------------------------
    # Only the loop changes the windows (it trims them here, so they stay bounded when
    # nobody scrapes); a scrape copies them first, in one C-level step under the GIL.
    def exposure(self, band: str, group: int, t0: float, t1: float) -> None:
        v, k = self.exposures_total.values, (band,)
        v[k] = v.get(k, 0.0) + 1.0
        ex = self.exposures
        ex.append((t0, t1, group))
        while ex[0][1] < t1 - WINDOW_S:
            ex.popleft()

    def visit(self, field: int, t_start: float) -> None:
        v = self.visits_total.values
        v[()] += 1.0
        vs = self.visits
        vs.append((t_start, field))
        while vs[0][0] < t_start - WINDOW_S:
            vs.popleft()

    def classified(self, prob) -> None:
        if len(prob):
            counts = np.bincount(np.argmax(prob, axis=1), minlength=len(self.classes))
            for c, n in zip(self.classes, counts, strict=False):
                if n:
                    self.classifications.inc(c, n=int(n))

    def spectrum(self, result: str, label: str | None = None,
                 before_peak: bool = False) -> None:
        self.followups.inc(result)
        if result == "done" and label:
            self.reward.inc(n=science_reward(label, label, before_peak,
                                             self.d.config.followup.reward))

    # Scrape-time views -----------------------------------------------------------------
    def coverage_deg2(self, now: float) -> float:
        t0 = now - WINDOW_S
        fields = {f for t, f in list(self.visits) if t0 <= t <= now}
        return len(fields) * self.field_deg2

    def shutter_ratio(self, now: float, n_groups: int) -> list[float]:
        t0 = now - WINDOW_S
        open_s = [0.0] * n_groups
        for a, b, g in list(self.exposures):
            if b > t0 and 0 <= g < n_groups:
                open_s[g] += min(b, now) - max(a, t0)
        per = len(self.d.config.camera.bands) * WINDOW_S
        return [min(1.0, max(0.0, s) / per) for s in open_s]

    def new_decisions(self) -> None:
        core = self.d.core
        n, ms = core.decisions, list(core.decision_ms)  # a scrape thread: one C-level copy
        for x in ms[max(0, len(ms) - (n - self._decisions_seen)):]:
            self.decision.observe(x / 1e3)
        self._decisions_seen = n


class MetricsServer:
    """``/metrics`` on a thread that sleeps in ``accept`` and a few that answer.

    prometheus_client's ``start_http_server`` polls its socket twice a second for a
    shutdown that never comes and starts a thread per request. Here one thread sleeps in
    ``accept`` until a scrape comes and hands the connection to one of ``WORKERS``
    threads, which sleep on a queue in between: no polling, no thread per request. A
    client that stalls mid-request holds only its own worker, and only until its
    deadline: reading the request and writing the answer must both end within
    ``REQUEST_TIMEOUT_S`` (Prometheus's default scrape timeout). The other scrapers are
    answered meanwhile (docs/safety.md). With every worker held, a new connection is
    closed at once rather than queued behind them. The registry is read by one scrape
    at a time (the collectors keep cursors); only the network waits run side by side.
    :meth:`close` (the daemon's close) wakes the threads, cuts off open connections and
    frees the port. It answers in the text format (``drivers.loopmetrics.encode_text``),
    which every Prometheus reads.
    """

    REQUEST_TIMEOUT_S = 10.0
    WORKERS = 4

    def __init__(self, registry, port: int, addr: str = "127.0.0.1"):
        server = self

        class Handler(WSGIRequestHandler):
            def setup(self):
                super().setup()
                # The whole request, not each read, within the deadline.
                self.rfile.close()
                self.rfile = io.BufferedReader(_DeadlineReader(
                    self.connection, time.monotonic() + server.REQUEST_TIMEOUT_S))

            def log_message(self, *args):  # the daemon's log is for operators
                pass

        self.httpd = make_server(addr, port, self._counted(wsgi_app(registry)), WSGIServer,
                                 Handler)
        self.httpd.timeout = None  # get_request blocks until a connection
        self.port = self.httpd.server_address[1]
        self.scrapes, self.cut_off, self.refused, self.cpu_s = 0, 0, 0, 0.0
        self._lock = threading.Lock()  # the counters and the open connections
        self._scrape_lock = threading.Lock()  # one collection of the registry at a time
        self._open: set[socket.socket] = set()
        self._slots = threading.Semaphore(self.WORKERS)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.workers = [threading.Thread(target=self._work, name=f"metrics-http-{k}",
                                         daemon=True) for k in range(self.WORKERS)]
        for w in self.workers:
            w.start()
        self.thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        cpu0 = time.thread_time()
        while not self._stop.is_set():
            try:
                request, client = self.httpd.get_request()  # sleeps until a connection
            except OSError:
                continue
            if self._stop.is_set() or not self._slots.acquire(blocking=False):
                # Every worker held (stalled clients): refused now, not queued behind them.
                self.httpd.shutdown_request(request)
                refused = not self._stop.is_set()
            else:
                refused = False
                with self._lock:
                    self._open.add(request)
                self._queue.put((request, client))
            cpu = time.thread_time()
            with self._lock:
                self.refused += refused
                self.cpu_s += cpu - cpu0
            cpu0 = cpu

    def _work(self) -> None:
        while True:
            item = self._queue.get()  # sleeps until a connection
            if item is None:
                return
            request, client = item
            cpu0 = time.thread_time()
            cut = False
            try:
                self.httpd.finish_request(request, client)
            except OSError:  # stalled past the deadline, or gone: cut off, quietly
                cut = True
            except Exception as exc:  # a bug must not take a worker away
                log.error("/metrics request failed: %s: %s", type(exc).__name__, exc)
            self.httpd.shutdown_request(request)
            # Its CPU, all of it the scrape's: the daemon logs the sum at close (brain
            # bench metrics reads it there).
            with self._lock:
                self._open.discard(request)
                self.cut_off += cut
                self.cpu_s += time.thread_time() - cpu0
            self._slots.release()

    def _counted(self, app):
        def counted(environ, start_response):
            with self._scrape_lock:
                self.scrapes += 1
                return app(environ, start_response)  # the body is built here, in full
        return counted

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        try:  # wake the accept
            socket.create_connection(self.httpd.server_address, timeout=1).close()
        except OSError:
            pass
        self.thread.join(5)
        with self._lock:  # cut off the connections still open
            for request in self._open:
                try:
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for _ in self.workers:
            self._queue.put(None)
        for w in self.workers:
            w.join(5)
        self.httpd.server_close()


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each given what is left of one deadline (socket timeouts are per
    read: a client sending a byte every few seconds would never time out). The answer
    is written under the last read's timeout, so the deadline holds for it as well."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class _StateCollector:
    """Gauges computed from the daemon's state when scraped."""

    def __init__(self, m: DaemonMetrics):
        self.m = m

    def collect(self):
        m, d = self.m, self.m.d
        core, cfg = d.core, d.config
        now = d.clock.now()
        m.new_decisions()
        fam = {k: GaugeMetricFamily(f"sitian_site_{k}", h, labels=["site"]) for k, h in (
            ("open", "1 when the site's domes are open for the survey"),
            ("safe", "1 when the site's weather is safe (missing or stale data is unsafe)"),
            ("dark", "1 when the sun is below the observing limit"),
            ("held_closed", "1 when an operator holds the site closed"))}
        wx = {k: GaugeMetricFamily(f"sitian_weather_{name}", h, labels=["site"])
              for k, name, h in WEATHER_FIELDS}
        rain = GaugeMetricFamily("sitian_weather_rain", "1 when it rains", labels=["site"])
        age = GaugeMetricFamily("sitian_weather_age_seconds",
                                "World seconds since the site's last weather report",
                                labels=["site"])
        sky = core.sky
        for sid, s in list(core.sites.items()):
            w = s.weather
            verdict = weather_verdict(cfg.limits, w, now)
            dark = (sky is not None and
                    sky.night.sites[sid].is_dark(now, cfg.limits.max_sun_alt_deg))
            fam["open"].add_metric([sid], float(s.open))
            fam["safe"].add_metric([sid], float(verdict.safe))
            fam["dark"].add_metric([sid], float(dark))
            fam["held_closed"].add_metric([sid], float(s.held_closed))
            if w is not None:
                for k, _, _ in WEATHER_FIELDS:
                    wx[k].add_metric([sid], float(getattr(w, k)))
                rain.add_metric([sid], float(w.rain))
            age.add_metric([sid], max(0.0, now - w.t) if w is not None else math.inf)
        yield from fam.values()
        yield from wx.values()
        yield rain
        yield age
        rejected = CounterMetricFamily("sitian_weather_rejected",
                                       "Weather reports with a value outside its physical "
                                       "range (treated as missing: unsafe)",
                                       labels=["site", "field"])
        seen = dict(core.weather_rejected)
        for sid in core.sites:
            for name in WEATHER_RANGES:
                rejected.add_metric([sid, name], float(seen.get((sid, name), 0)))
        yield rejected
        cov = GaugeMetricFamily("sitian_coverage_3band_square_degrees",
                                "Sky imaged in all three bands in the last 30 minutes")
        cov.add_metric([], m.coverage_deg2(now))
        yield cov
        goal = GaugeMetricFamily("sitian_coverage_goal_square_degrees",
                                 "The survey's goal for one 30-minute window")
        goal.add_metric([], m.goal_deg2)
        yield goal
        shutter = GaugeMetricFamily("sitian_open_shutter_ratio",
                                    "Fraction of the last 30 minutes the group's shutters "
                                    "were open", labels=["group"])
        paused = GaugeMetricFamily("sitian_group_paused", "1 when an operator paused the "
                                   "group", labels=["group"])
        ratios = m.shutter_ratio(now, len(core.groups))
        for g, r in zip(core.groups, ratios, strict=True):
            shutter.add_metric([g.name], r)
            paused.add_metric([g.name], float(g.paused))
        yield shutter
        yield paused
        cand = GaugeMetricFamily("sitian_candidates", "Classified transient candidates")
        prob = core.obj_prob
        cand.add_metric([], float((prob.sum(axis=1) > 0).sum()) if prob.ndim == 2
                        and prob.size else 0.0)
        yield cand
