"""Operations (issue 7): the daemon's metrics (names, types, bounded labels), the Grafana
dashboard references only exported metrics, the Prometheus config and alert rules pass
promtool, and an end-to-end rehearsal scraped by a real Prometheus: all 60 devices up,
counters growing, every metric the dashboard uses present."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from brain.config import config_from_dict
from brain.ops.prometheus import MetricsServer
from brain.shells.daemon import Daemon
from drivers.clock import WorldClock, parse_start
from drivers.device import Device, DeviceHost
from tests.conftest import REPO, brain_cmd, stop_procs
from tests.test_daemon import free_port

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "sitian-dashboard.json"
START = "2026-12-15T11:00:00"  # Xinglong dark, the western sites not yet

# name -> Prometheus type, for every metric the daemon exports
EXPECTED = {
    "sitian_build_info": "gauge",
    "sitian_device_up": "gauge", "sitian_device_heartbeat_age_seconds": "gauge",
    "sitian_commands": "counter", "sitian_command_latency_seconds": "histogram",
    "sitian_protocol_errors": "counter", "sitian_protocol_late_replies": "counter",
    "sitian_protocol_future_stamped": "counter",
    "sitian_site_open": "gauge", "sitian_site_safe": "gauge", "sitian_site_dark": "gauge",
    "sitian_site_held_closed": "gauge", "sitian_safety_vetoes": "counter",
    "sitian_weather_wind_speed_meters_per_second": "gauge",
    "sitian_weather_humidity_ratio": "gauge", "sitian_weather_cloud_cover_ratio": "gauge",
    "sitian_weather_seeing_arcseconds": "gauge", "sitian_weather_dew_margin_celsius": "gauge",
    "sitian_weather_rain": "gauge", "sitian_weather_age_seconds": "gauge",
    "sitian_weather_rejected": "counter",
    "sitian_exposures": "counter", "sitian_visits": "counter",
    "sitian_coverage_3band_square_degrees": "gauge",
    "sitian_coverage_goal_square_degrees": "gauge",
    "sitian_open_shutter_ratio": "gauge", "sitian_group_paused": "gauge",
    "sitian_candidates": "gauge", "sitian_classifications": "counter",
    "sitian_followups": "counter", "sitian_followup_reward": "counter",
    "sitian_operator_actions": "counter", "sitian_night_jobs": "counter",
    "sitian_alerts": "counter",
    "sitian_scheduler_decision_seconds": "histogram",
    "sitian_event_loop_lag_seconds": "histogram",
}


def dashboard_metrics() -> set[str]:
    d = json.loads(DASHBOARD.read_text())
    names = set()
    for p in d["panels"]:
        for t in p["targets"]:
            names |= set(re.findall(r"\bsitian_[a-z0-9_]+", t["expr"]))
    return names


def family(sample_name: str) -> str:
    """The metric family of a sample name (counter _total, histogram _bucket...)."""
    for suffix in ("_bucket", "_count", "_sum", "_total", "_created"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


@pytest.fixture(scope="module")
def exposition(tmp_path_factory):
    """The daemon's /metrics text, from a real Daemon with the default array (no devices
    connected: the state every series starts from)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from brain.config import load_config
    from brain.shells.daemon import Daemon

    registry = CollectorRegistry()
    tmp = tmp_path_factory.mktemp("ops")
    d = Daemon(load_config(), tmp / "journal.sqlite",
               router=f"tcp://127.0.0.1:{free_port()}", pub=None, registry=registry)
    try:
        return generate_latest(registry).decode()
    finally:
        d.close()


def test_metric_names_types_and_bounded_labels(exposition):
    fams = {f.name: f for f in text_string_to_metric_families(exposition)}
    for name, typ in EXPECTED.items():
        assert name in fams, f"{name} not exported"
        assert fams[name].type == typ, (name, fams[name].type)
    assert all(n.startswith("sitian_") for n in fams)
    # label sets bounded by the configuration
    up = fams["sitian_device_up"].samples
    assert len(up) == 60 and all(s.value == 0 for s in up)  # none connected yet
    assert len(fams["sitian_open_shutter_ratio"].samples) == 18
    assert {s.labels["site"] for s in fams["sitian_site_safe"].samples} == {"xl", "lh", "mz"}
    # no weather yet: unsafe, and its age is infinite
    assert all(s.value == 0 for s in fams["sitian_site_safe"].samples)
    assert all(s.value == float("inf") for s in fams["sitian_weather_age_seconds"].samples)
    assert fams["sitian_coverage_goal_square_degrees"].samples[0].value == 10000
    vetoes = {s.labels["rule"] for s in fams["sitian_safety_vetoes"].samples
              if s.name.endswith("_total")}
    assert {"wind", "humidity", "rain", "weather_stale", "weather_invalid", "sun",
            "altitude"} <= vetoes
    rejected = fams["sitian_weather_rejected"].samples
    assert len(rejected) == 3 * 5 and all(s.value == 0 for s in rejected)  # sites x fields


def test_dashboard_references_only_exported_metrics(exposition):
    exported = {f.name for f in text_string_to_metric_families(exposition)}
    used = dashboard_metrics()
    assert len(used) >= 20
    missing = sorted(n for n in used if family(n) not in exported)
    assert missing == []
    d = json.loads(DASHBOARD.read_text())
    fleet = next(p for p in d["panels"] if p["title"].startswith("Fleet"))
    assert "sitian_device_up" in fleet["targets"][0]["expr"]
    # weather panels draw the safety limits of the default config
    wind = next(p for p in d["panels"] if p["title"].startswith("Wind"))
    steps = wind["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 15 and wind["fieldConfig"]["defaults"]["custom"][
        "thresholdsStyle"]["mode"].startswith("line")


def _promtool(*args) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(.ci/run does)")
    return subprocess.run([exe, *args], cwd=DEPLOY / "prometheus", capture_output=True,
                          text=True, timeout=60)


def test_prometheus_config_and_alert_rules_pass_promtool():
    r = _promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0 and "5 rules found" in r.stdout, r.stdout + r.stderr
    # the rules' behaviour: device down, unsafe-but-open, coverage, stale weather
    r = _promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"SitianDeviceDown", "SitianSiteUnsafeButOpen", "SitianCoverageFarBelowGoal",
            "SitianWeatherStale"} <= names
    for g in rules["groups"]:
        for rule in g["rules"]:
            for n in re.findall(r"\bsitian_[a-z0-9_]+", rule["expr"]):
                assert n in EXPECTED, n


def test_a_broken_rule_file_fails_promtool(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n"
                   "        expr: sitian_device_up ==\n")
    r = _promtool("check", "rules", str(bad))
    assert r.returncode != 0


# Weather a station cannot have measured ---------------------------------------------------
class Station(Device):
    """Xinglong's weather station, reporting what the test queues."""

    kind = "weather"

    def __init__(self):
        super().__init__("xl.wx", "xl")
        self.reports: list[dict] = []

    def events(self, now):
        out, self.reports = [("weather", r) for r in self.reports], []
        return out


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_impossible_weather_makes_the_site_unsafe_in_the_daemons_metrics(tmp_path):
    """A station on the daemon's link (real ZeroMQ) reports good weather: Xinglong is
    safe and opens. Then wind -100 m/s, humidity -3, cloud 7, seeing -1: /metrics shows
    the site unsafe and closed, and each impossible field counted."""
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "ops-xl"
    d["sites"] = [dict(d["sites"][0], groups=1)]
    d["spectrographs"] = []
    d.setdefault("sky", {})["density_scale"] = 0.05
    t = parse_start("2026-12-15T14:00:00")  # Xinglong is dark
    registry = CollectorRegistry()
    daemon = Daemon(config_from_dict(d), tmp_path / "journal.sqlite", WorldClock(t),
                    router=f"tcp://127.0.0.1:{free_port()}", pub=None, registry=registry)
    daemon.metrics_server = server = MetricsServer(registry, 0)
    daemon.clock.sync(t)
    station = Station()
    host = DeviceHost([station], daemon.link.router_endpoint, WorldClock(t),
                      follow_brain_clock=True)
    safe, opened = ("sitian_site_safe", (("site", "xl"),)), ("sitian_site_open",
                                                             (("site", "xl"),))

    def pump_until(pred, what):
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            daemon.step()
            host.step(1)
            s = _scrape(server.port)
            if pred(s):
                return s
        pytest.fail(f"timed out waiting for {what}")

    try:
        station.reports.append({"wind_mps": 2.0, "humidity": 0.3, "rain": False,
                                "cloud": 0.1, "seeing_arcsec": 1.2, "dew_margin_c": 5.0})
        pump_until(lambda s: s[safe] == 1 and s[opened] == 1, "a safe, open site")
        station.reports.append({"wind_mps": -100.0, "humidity": -3.0, "rain": False,
                                "cloud": 7.0, "seeing_arcsec": -1.0, "dew_margin_c": 5.0})
        s = pump_until(lambda s: s[safe] == 0, "the site unsafe")
        assert s[opened] == 0
        rejected = {k[1][0][1]: v for k, v in s.items()
                    if k[0] == "sitian_weather_rejected_total" and k[1][1] == ("site", "xl")}
        assert rejected == {"wind_mps": 1, "humidity": 1, "cloud": 1, "seeing_arcsec": 1,
                            "dew_margin_c": 0}
    finally:
        host.close()
        daemon.close()


# End-to-end rehearsal -------------------------------------------------------------------
def _query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(port: int, expr: str) -> float | None:
    res = _query(port, expr)
    return float(res[0]["value"][1]) if res else None


def _wait(pred, timeout_s: float, what: str, procs):
    t_end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < t_end:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"{what}: a process exited early ({p.args[:4]}, "
                            f"rc {p.returncode})")
        try:
            last = pred()
            if last:
                return last
        except OSError:
            pass  # not listening yet
        time.sleep(1.0)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} (last: {last})")


def test_rehearsal_scraped_by_prometheus(tmp_path):
    """``brain run --start ... --speed 30`` with ``brain sim-drivers`` (the default array:
    54 cameras, 3 weather stations, 3 spectrographs), scraped every second by a real
    Prometheus server."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus not found: install Debian's prometheus package (.ci/run "
                    "does)")
    cfg = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    cfg.setdefault("sky", {})["density_scale"] = 0.05  # a sparse sky: quick to start
    config = tmp_path / "array.yaml"
    config.write_text(yaml.safe_dump(cfg))
    mport, pport = free_port(), free_port()
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    link = ["--config", str(config), "--start", START, "--speed", "30", "--router", router,
            "--pub", pub]
    (tmp_path / "prom.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "sitian-brain",
                            "static_configs": [{"targets": [f"127.0.0.1:{mport}"]}]}]}))
    out = (tmp_path / "procs.log").open("w")
    procs = [
        subprocess.Popen(brain_cmd("sim-drivers", *link, "--weather", "clear"), cwd=REPO,
                         stdout=out, stderr=subprocess.STDOUT),
        subprocess.Popen(brain_cmd("run", *link, "--journal", str(tmp_path / "j.sqlite"),
                                   "--metrics-port", str(mport), "--policy", "greedy",
                                   "--hosting", "local"),
                         cwd=REPO, stdout=out, stderr=subprocess.STDOUT),
        subprocess.Popen([exe, f"--config.file={tmp_path / 'prom.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{pport}"],
                         stdout=out, stderr=subprocess.STDOUT)]
    try:
        _wait(lambda: _value(pport, "count(sitian_device_up == 1)") == 60, 240,
              "all 60 devices up in Prometheus", procs)
        first = _wait(lambda: _value(pport, "sum(sitian_exposures_total)"), 120,
                      "exposures", procs)
        _wait(lambda: (_value(pport, "sum(sitian_exposures_total)") or 0) > first + 30, 120,
              "exposures counter growing", procs)
        assert _value(pport, "sum(sitian_visits_total)") > 0
        assert _value(pport, 'sitian_site_open{site="xl"}') == 1
        assert _value(pport, 'sitian_site_safe{site="xl"}') == 1
        assert _value(pport, "sitian_coverage_3band_square_degrees") > 0
        assert _value(pport, 'sum(sitian_commands_total{result="done"})') > 0
        assert _value(pport, 'max(sitian_open_shutter_ratio{group=~"xl.*"})') > 0
        # each group's own shutters: xl.g01's exposures are not filed under another name
        _wait(lambda: (_value(pport, 'sitian_open_shutter_ratio{group="xl.g01"}') or 0) > 0,
              60, "xl.g01's open-shutter ratio", procs)
        missing = [n for n in sorted(dashboard_metrics())
                   if not _query(pport, f'count({{__name__="{n}"}})')]
        assert missing == [], f"dashboard metrics Prometheus never saw: {missing}"
    finally:
        stop_procs(procs, 15)
        out.close()
