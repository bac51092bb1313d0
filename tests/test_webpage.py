"""The operator web page (brain/ops/webpage.py, docs/operator-page.md) in a real browser.

A rehearsal: ``brain run --hosting local`` (a real daemon, its page on a free port, an
operators' token written by ``brain keys DIR --web-token``) with Xinglong's first group
and its spectrograph served by ``brain sim-drivers``, and in this process a weather
station the test turns to rain and a second group whose domes are stuck open (``close``
fails). Debian's headless ``chromium`` (through ``chromium-driver`` and selenium) opens
the page and checks: every device shown, the page updating itself as the night goes on
with data never more than 5 s old, an action refused without login (shown on the page,
nothing changed in the daemon) and carried out with the token, and the unsafe-but-open
alert once it rains on the stuck domes. Plain HTTP checks the refusals (401, bad JSON,
unknown actions, a foreign Host header). In process: the snapshot builder at unit level,
and plans asked of a stand-in operators' API, approved and rejected in the browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from brain.config import config_from_dict, load_config
from brain.core.association import DetectionBatch
from brain.core.braincore import BrainCore
from brain.core.events import Weather
from brain.ops.webpage import WebServer, read_token
from brain.ops.webstate import WebState
from brain.shells.daemon_web import WebPart
from drivers.clock import WorldClock, parse_start
from drivers.device import CommandError, Device, DeviceHost, Pending
from observatory.taxonomy import CLASSES
from observatory.times import unix_to_mjd
from tests.conftest import REPO, brain_cmd, run_brain, stop_procs
from tests.conftest import wait_for as _wait_for
from tests.test_daemon import free_port, query, small_config  # noqa: F401 (a fixture)

START = "2026-12-15T11:00:00"  # Xinglong is dark from about 10:50 UTC
SPEED = 60.0
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DEVICES = ("xl.g01.g", "xl.g01.r", "xl.g01.i", "xl.g02.g", "xl.g02.r", "xl.g02.i",
           "xl.spec", "xl.wx")
CALM = {"wind_mps": 2.0, "humidity": 0.3, "rain": False, "cloud": 0.1,
        "seeing_arcsec": 1.2, "dew_margin_c": 5.0}


# Devices of this process ---------------------------------------------------------------
class Station(Device):
    """Xinglong's weather station: calm until ``rain`` is set (reported at once)."""

    kind = "weather"

    def __init__(self):
        super().__init__("xl.wx", "xl")
        self.rain = False
        self.next_report = -math.inf

    def set_rain(self) -> None:
        self.rain, self.next_report = True, -math.inf

    def events(self, now):
        if now < self.next_report:
            return []
        self.next_report = now + 20.0
        return [("weather", {**CALM, "rain": self.rain})]


class StuckTelescope(Device):
    """A telescope of group xl.g02 that observes, but whose dome never closes."""

    kind = "telescope"
    capabilities = ("slew", "expose", "abort", "park", "open", "close", "status")

    def __init__(self, band: str):
        super().__init__(f"xl.g02.{band}", "xl", 2, band)
        self.is_open = False

    def state(self, now):
        return {"state": "idle" if self.is_open else "closed"}

    def cmd_open(self, args, now):
        self.is_open = True
        return {}

    def cmd_close(self, args, now):
        raise CommandError("device_fault", "dome motor stuck: the dome stays open")

    def cmd_park(self, args, now):
        return {}

    def cmd_abort(self, args, now):
        return {}

    def cmd_slew(self, args, now):
        return Pending(now + 5.0, lambda t: {} if t >= now + 5.0 else None)

    def cmd_expose(self, args, now):
        t1 = now + float(args["seconds"])
        return Pending(t1, lambda t: {"obs_id": args["obs_id"], "t_start": now, "t_end": t1,
                                      "limiting_mag": 20.5} if t >= t1 else None)


class Host(threading.Thread):
    """A DeviceHost stepped on a thread of its own (its sockets made there too)."""

    def __init__(self, devices, router: str):
        super().__init__(daemon=True)
        self.devices, self.router = devices, router
        self.stop = threading.Event()

    def run(self):
        host = DeviceHost(self.devices, self.router, WorldClock(parse_start(START), SPEED),
                          follow_brain_clock=True)
        try:
            while not self.stop.is_set():
                host.step(20)
        finally:
            host.close()


# HTTP ------------------------------------------------------------------------------------
def http(url: str, body=None, token: str | None = None, raw: bytes | None = None,
         headers: dict | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data, h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(pred, timeout_s: float, what: str, procs=()):
    """tests.conftest.wait_for; not listening yet, or no state yet (503) is not yet."""
    _wait_for(pred, timeout_s, what, procs, not_yet=(OSError, KeyError, TypeError, AssertionError))


class Rehearsal:
    def __init__(self, root: Path, config: Path):
        self.root = root
        self.journal = root / "journal.sqlite"
        r = run_brain("keys", str(root / "keys"), "--web-token", timeout=60)
        assert r.returncode == 0, r.stderr
        self.token_file = root / "keys" / "web.token"
        self.token = read_token(self.token_file)
        self.router = f"tcp://127.0.0.1:{free_port()}"
        pub = f"tcp://127.0.0.1:{free_port()}"
        self.metrics_port, self.web_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        link = ["--config", str(config), "--start", START, "--speed", f"{SPEED:g}",
                "--router", self.router, "--pub", pub]
        self.log = (root / "rehearsal.log").open("w")
        self.daemon = subprocess.Popen(
            brain_cmd("run", *link, "--journal", str(self.journal), "--hosting", "local",
                      "--policy", "greedy", "--metrics-port", str(self.metrics_port),
                      "--web-port", str(self.web_port), "--web-token", str(self.token_file)),
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.drivers = subprocess.Popen(
            brain_cmd("sim-drivers", *link, "--weather", "clear", "--seed", "7",
                      "--only", "xl.g01.g,xl.g01.r,xl.g01.i,xl.spec"),
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.station = Station()
        self.host = Host([self.station, *(StuckTelescope(b) for b in "gri")], self.router)
        self.host.start()

    def state(self) -> dict:
        code, body = http(self.url + "/api/state")
        assert code == 200, body
        return body

    def operator_events(self) -> list:
        return query(self.journal, "SELECT name, data FROM events WHERE device='operator' "
                                   "ORDER BY seq")

    def metric(self, name: str, labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        m = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
        assert m, f"{name}{{{labels}}} not on /metrics"
        return float(m.group(1))

    def close(self):
        self.host.stop.set()
        self.host.join(10)
        stop_procs((self.daemon, self.drivers))
        self.log.close()


@pytest.fixture(scope="module")
def rehearsal(small_config, tmp_path_factory):  # noqa: F811 (the fixture, imported)
    r = Rehearsal(tmp_path_factory.mktemp("web"), small_config)
    try:
        both_up = lambda: all(g["up"] for g in r.state()["state"]["groups"])  # noqa: E731
        wait_for(both_up, 120, "both groups up on the page", [r.daemon, r.drivers])
        wait_for(lambda: r.state()["state"]["summary"]["group_exposures"] >= 6, 120,
                 "the first exposures", [r.daemon, r.drivers])
        yield r
    except BaseException:
        print((r.root / "rehearsal.log").read_text()[-4000:])
        raise
    finally:
        r.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install Debian's chromium and "
                    "chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1200",
              f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver, pred, timeout_s: float, what: str):
    try:
        return WebDriverWait(driver, timeout_s, 0.2, ignored_exceptions=(
            StaleElementReferenceException,)).until(lambda d: pred(d))
    except TimeoutException:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}; message: "
                    f"{driver.find_element(By.ID, 'message').text!r}")


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def click(driver, css: str):
    """Click the (re-rendered once a second) element, again if it went stale meanwhile."""
    def go(d):
        d.find_element(By.CSS_SELECTOR, css).click()
        return True
    until(driver, go, 10, f"a click on {css}")


def age(driver) -> float:
    return float(driver.find_element(By.ID, "age").get_attribute("data-age"))


# The rehearsal in the browser ------------------------------------------------------------
def test_the_page_shows_the_rehearsal_and_acts_only_with_the_token(rehearsal, browser):
    r, b = rehearsal, browser
    b.get(r.url + "/")
    assert b.title.startswith("SiTian Brain")
    until(b, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"), 15,
          "the first state rendered")
    # every device of the rehearsal, up
    for dev in DEVICES:
        el = b.find_element(By.CSS_SELECTOR, f'[data-device="{dev}"]')
        assert "up" in el.get_attribute("class").split(), dev
    assert text(b, "planner-status") == "not hosted"
    assert "planner not hosted" in text(b, "ask-box")
    assert "Xinglong" in text(b, "sites") and "safe" in text(b, "sites")
    assert b.find_elements(By.CSS_SELECTOR, "#skymap path[fill^='hsl']")  # coverage drawn
    assert age(b) <= 5.0
    # it updates itself as the night goes on
    t0, n0 = text(b, "world-time"), int(text(b, "exposures"))
    until(b, lambda d: text(d, "world-time") != t0 and int(text(d, "exposures")) > n0, 20,
          "the world time and the exposure count to move")
    for _ in range(4):
        assert age(b) <= 5.0
        time.sleep(0.5)
    # nothing but the page itself and its JSON was loaded
    origins = b.execute_script("return performance.getEntriesByType('resource')"
                               ".map(e => new URL(e.name).origin)")
    assert origins and set(origins) == {r.url}

    # An action without login: refused on the page, nothing changed in the daemon.
    before = r.operator_events()
    pause = '#fleet tr[data-group="xl.g01"] button[data-tool="pause_group"]'
    click(b, pause)
    until(b, lambda d: "refused (401" in text(d, "message"), 15, "the refusal shown")
    assert "token" in text(b, "message")
    assert r.operator_events() == before
    assert not next(g for g in r.state()["state"]["groups"] if g["name"] == "xl.g01")["paused"]
    assert r.metric("sitian_web_actions_total", 'result="unauthorized"') >= 1

    # Logged in: carried out, journalled, shown.
    b.find_element(By.ID, "token").send_keys(r.token)
    click(b, "#login")
    assert "logged in" in text(b, "login-state")
    click(b, pause)
    until(b, lambda d: text(d, "message").startswith("done: pause_group xl.g01"), 15,
          "the action done")
    until(b, lambda d: "paused" in d.find_element(
        By.CSS_SELECTOR, '#fleet tr[data-group="xl.g01"]').text, 10, "xl.g01 shown paused")
    assert [n for n, _ in r.operator_events()][len(before):] == ["pause_group"]
    assert r.metric("sitian_web_actions_total", 'result="done"') == 1

    # Rain on domes stuck open: the alert, prominent, naming the stuck devices.
    assert not b.find_elements(By.CSS_SELECTOR, ".alert")
    r.station.set_rain()
    until(b, lambda d: "xl.g02.g" in d.find_element(By.ID, "alerts").text, 30,
          "the unsafe-but-open alert naming the stuck domes")
    alert = b.find_element(By.CSS_SELECTOR, '.alert[data-site="xl"]')
    assert alert.is_displayed() and "UNSAFE (rain)" in alert.text and "OPEN" in alert.text
    # the rest of the site closed; the stuck group keeps the alert up
    until(b, lambda d: "xl.g01" not in d.find_element(By.CSS_SELECTOR, ".alert").text, 30,
          "xl.g01's domes closed")
    time.sleep(3)
    assert b.find_elements(By.CSS_SELECTOR, '.alert[data-site="xl"]')
    assert "UNSAFE: rain" in text(b, "sites")


def test_actions_refused_over_plain_http_change_nothing(rehearsal):
    r = rehearsal
    url = r.url + "/api/action"
    pause = {"tool": "pause_group", "args": {"group": "xl.g02"}}
    before, paused = r.operator_events(), r.metric("sitian_web_actions_total",
                                                   'result="unauthorized"')
    for token, needle in ((None, "log in"), ("x" * 43, "wrong token")):
        code, body = http(url, pause, token)
        assert code == 401 and needle in body["error"] and "\n" not in body["error"]
    assert r.metric("sitian_web_actions_total", 'result="unauthorized"') == paused + 2
    code, body = http(url, pause, headers={"Authorization": "Basic " + r.token})
    assert code == 401 and "Bearer" in body["error"]
    bad = [(http(url, raw=b"{not json", token=r.token), 400, "not JSON"),
           (http(url, [1, 2], r.token), 400, "JSON object"),
           (http(url, {"tool": "launch_rocket", "args": {}}, r.token), 400, "unknown action"),
           (http(url, {"tool": "query_objects", "args": {}}, r.token), 400, "not an action"),
           (http(url, {"tool": "pause_group", "args": {"group": "XX"}}, r.token), 400,
            "group"),
           (http(url, {"tool": "pause_group", "args": "xl.g02"}, r.token), 400, "object"),
           (http(url, {**pause, "extra": 1}, r.token), 400, "unknown key"),
           (http(url, raw=b" " * 70_000, token=r.token), 413, "at most"),
           (http(r.url + "/api/nothing", pause, r.token), 404, "no such endpoint"),
           (http(r.url + "/api/ask", {"request": "pause xl.g02"}, r.token), 503,
            "planner not hosted"),
           (http(r.url + "/api/plans/approve", {"id": 1}, r.token), 404, "no plan")]
    for (code, body), want, needle in bad:
        assert code == want and needle in body["error"], (code, body)
        assert "\n" not in body["error"] and "Traceback" not in body["error"]
    # the daemon's own refusal: validated on its loop, journalled as refused
    code, body = http(url, {"tool": "resume_group", "args": {"group": "xl.g02"}}, r.token)
    assert code == 409 and "xl.g02 is not paused" in body["error"]
    after = r.operator_events()
    assert [n for n, _ in after[len(before):]] == ["refused"]
    assert not next(g for g in r.state()["state"]["groups"] if g["name"] == "xl.g02")["paused"]
    # reads: free on the loopback, but not for a page that names another host
    code, body = http(r.url + "/api/state", headers={"Host": "evil.example:80"})
    assert code == 403 and "Host" in body["error"]
    assert r.state()["age_s"] <= 5.0


# In process: the snapshot, and plans --------------------------------------------------------
def _core_at_night(small_config):  # noqa: F811 (the fixture's path)
    config = config_from_dict(yaml.safe_load(Path(small_config).read_text()))
    core = BrainCore(config, require_devices=True)
    t = parse_start("2026-12-15T14:00:00")
    core.ensure_night(t)
    return config, core, t


def test_snapshot_raises_the_alert_only_for_an_unsafe_site_still_open(small_config):  # noqa: F811
    config, core, t = _core_at_night(small_config)
    ws = WebState(config, "local")
    devices = {d: {"kind": "telescope", "site": "xl", "up": True, "state": "closed"}
               for g in core.groups for d in g.devices}
    devices["xl.wx"] = {"kind": "weather", "site": "xl", "up": True, "state": "idle"}
    core.sites["xl"].weather = Weather(t - 10, "xl", **CALM)
    snap = ws.build(core, t, devices, "not hosted")
    assert snap["alerts"] == [] and snap["sites"][0]["safe"]
    json.dumps(snap, allow_nan=False)  # plain JSON: no NaN anywhere
    # rain with every dome closed: unsafe, but nothing to warn about
    core.sites["xl"].weather = Weather(t - 10, "xl", **{**CALM, "rain": True})
    assert ws.build(core, t, devices, "not hosted")["alerts"] == []
    # one dome open (its link down since): the alert, with the rule and the device
    devices["xl.g02.r"] = {**devices["xl.g02.r"], "state": "idle", "up": False}
    snap = ws.build(core, t + 30, devices, "not hosted")
    (alert,) = snap["alerts"]
    assert alert["site"] == "xl" and alert["level"] == "critical"
    assert "rain" in alert["text"] and "xl.g02.r (link down)" in alert["text"]
    assert ws.build(core, t + 90, devices, "x")["alerts"][0]["since_s"] == 60.0
    # stale weather is unsafe too; a safe report clears the alert
    core.sites["xl"].weather = Weather(t - 1000, "xl", **CALM)
    assert "weather_stale" in ws.build(core, t, devices, "x")["alerts"][0]["text"]
    core.sites["xl"].weather = Weather(t, "xl", **CALM)
    assert ws.build(core, t, devices, "x")["alerts"] == []


def test_snapshot_lists_the_same_candidates_as_plan_state(small_config):  # noqa: F811
    """The page counts the candidates itself and reads out only the most probable: the
    same objects, classes and numbers as the core's full list (``plan_state``)."""
    config, core, t = _core_at_night(small_config)
    rng = np.random.default_rng(21)
    n = 45
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-30, 60, n)
    mjd0 = float(unix_to_mjd(t)) - 0.2
    for k in range(3):
        core.associator.add(DetectionBatch(ra, dec, np.full(n, mjd0 + 0.05 * k),
                                           np.full(n, 1), rng.uniform(17, 21, n),
                                           np.full(n, 0.05)))
    prob = rng.dirichlet(np.ones(len(CLASSES)), size=core.associator.n_objects)
    prob[rng.choice(n, 5, replace=False)] = 0.0  # five never classified: not candidates
    core.obj_prob = prob
    full = core.plan_state(t).objects
    assert len(full) == n - 5
    got = WebState(config, "local").build(core, t, {}, "x")["candidates"]
    assert got["n"] == len(full) and sum(got["classes"].values()) == len(full)
    want = sorted(full.items(), key=lambda kv: (-kv[1]["p_predicted"], kv[0]))[:30]
    assert [o["object_id"] for o in got["top"]] == [oid for oid, _ in want]
    for o, (_oid, w) in zip(got["top"], want, strict=True):
        assert o["predicted_class"] == w["predicted_class"]
        assert abs(o["p_predicted"] - w["p_predicted"]) < 2e-3
        assert o["n_detections"] == w["n_detections"] == 3
        assert abs(o["mag"] - w["mag"]) < 0.01 and abs(o["ra_deg"] - w["ra_deg"]) < 1e-4


def test_a_busy_web_port_leaves_the_daemon_without_the_page(small_config):  # noqa: F811
    config, _core, _t = _core_at_night(small_config)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    part = WebPart(SimpleNamespace(config=config, registry=None), "127.0.0.1",
                   busy.getsockname()[1], None, "local", None)
    try:
        part.start()
        assert part.status["web"].startswith("failed: web port ")
        assert "in use" in part.status["web"] and "\n" not in part.status["web"]
        assert part.apply() is False  # the loop goes on, without the page
        part.close()
    finally:
        busy.close()


class FakeApi(BaseHTTPRequestHandler):
    """The operators' API's POST /ask, planning "pause <group>" as the planner would."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["execute"] is False
        group = re.search(r"xl\.g\d\d|$", body["request"]).group(0)
        calls = ([{"tool": "pause_group", "args": {"group": group}}] if group else
                 [{"tool": "get_status", "args": {}}])
        out = json.dumps({"request": body["request"], "valid": "bogus" not in body["request"],
                          "problems": [], "calls": calls, "results": [{"approval": "needed"}],
                          "executed": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_plans_asked_approved_and_rejected_in_the_browser(small_config, browser, tmp_path):  # noqa: F811
    config, core, t = _core_at_night(small_config)
    token_file = tmp_path / "web.token"
    token_file.write_text("s3cret-token-for-the-test\n")
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    web = WebServer("127.0.0.1", 0, str(token_file), f"http://127.0.0.1:{api.server_port}")
    web.start()
    applied, stop = [], threading.Event()
    devices = {d: {"kind": "telescope", "site": "xl", "up": True, "state": "closed"}
               for g in core.groups for d in g.devices}
    ws = WebState(config, "ray")

    def loop():  # the daemon's side: publish, and carry out what was approved
        while not stop.is_set():
            for a in web.take_actions():
                applied.append((a.tool, a.args, a.request))
                web.finish(a, [])
            web.publish(json.dumps(ws.build(core, t, devices, "ready")).encode())
            time.sleep(0.1)

    threading.Thread(target=loop, daemon=True).start()
    b = browser
    try:
        b.get(f"http://127.0.0.1:{web.port}/")
        b.execute_script("sessionStorage.clear()")
        b.refresh()
        until(b, lambda d: d.find_elements(By.ID, "ask-text"), 15, "the planner's box")
        assert text(b, "planner-status") == "ready"
        # asking needs the token too
        b.find_element(By.ID, "ask-text").send_keys("please pause xl.g02")
        click(b, "#ask")
        until(b, lambda d: "ask refused (401" in text(d, "message"), 10, "ask refused")
        b.find_element(By.ID, "token").send_keys("s3cret-token-for-the-test")
        click(b, "#login")
        for k, group in ((1, "xl.g02"), (2, "xl.g01")):
            box = b.find_element(By.ID, "ask-text")
            box.clear()
            box.send_keys(f"please pause {group}")
            click(b, "#ask")
            until(b, lambda d, k=k: d.find_elements(
                By.CSS_SELECTOR, f'.plan[data-plan-id="{k}"] button[data-verb="approve"]'), 10,
                f"plan {k} shown with approve and reject")
            assert group in b.find_element(By.CSS_SELECTOR, f'.plan[data-plan-id="{k}"]').text
        click(b, 'button[data-plan="1"][data-verb="reject"]')
        until(b, lambda d: "rejected" in d.find_element(
            By.CSS_SELECTOR, '.plan[data-plan-id="1"]').text, 10, "plan 1 rejected")
        assert applied == []
        # approval without login is refused and changes nothing
        click(b, "#login")  # log out
        click(b, 'button[data-plan="2"][data-verb="approve"]')
        until(b, lambda d: "refused (401" in text(d, "message"), 10, "approval refused")
        assert applied == [] and web.plans[2]["status"] == "pending"
        b.find_element(By.ID, "token").send_keys("s3cret-token-for-the-test")
        click(b, "#login")
        click(b, 'button[data-plan="2"][data-verb="approve"]')
        until(b, lambda d: "approved" in d.find_element(
            By.CSS_SELECTOR, '.plan[data-plan-id="2"]').text, 10, "plan 2 approved")
        assert applied == [("pause_group", {"group": "xl.g01"}, "please pause xl.g01")]
        base, tok = f"http://127.0.0.1:{web.port}/api", "s3cret-token-for-the-test"
        code, body = http(base + "/plans/approve", {"id": 2}, tok)
        assert code == 409 and "is approved: nothing to decide" in body["error"]
        # a plan of read-only calls is answered, one the planner found bad is not valid:
        # neither waits for a decision
        for request, status in (("status of the array", "answered"),
                                ("bogus pause xl.g02", "not valid")):
            code, plan = http(base + "/ask", {"request": request}, tok)
            assert code == 200 and plan["status"] == status
            code, body = http(base + "/plans/approve", {"id": plan["id"]}, tok)
            assert code == 409 and "nothing to decide" in body["error"]
        assert len(applied) == 1
    finally:
        stop.set()
        web.close()
        api.shutdown()
        api.server_close()


def test_run_refuses_a_bad_token_file_in_one_line(tmp_path):
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    for path, needle in ((tmp_path / "none.token", "not found"), (short, "shorter than 16")):
        r = run_brain("run", "--hosting", "local", "--metrics-port", "0", "--web-token",
                      str(path), "--journal", str(tmp_path / "j" / "j.sqlite"), timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "--web-token" in lines[0]
    # off the loopback the page needs a token; the address must be one
    for host, needle in (("10.1.2.3", "is not loopback"), ("far.away", "not an IP address")):
        cfg = tmp_path / f"{host}.yaml"
        d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
        cfg.write_text(yaml.safe_dump(d | {"ops": {**d.get("ops", {}), "web_host": host}}))
        r = run_brain("run", "--config", str(cfg), "--hosting", "local", "--metrics-port",
                      "0", "--journal", str(tmp_path / "j" / "j.sqlite"), timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "j" / "j.sqlite").exists()
    again = run_brain("keys", str(tmp_path / "k"), "--web-token")
    assert again.returncode == 0 and (tmp_path / "k" / "web.token").stat().st_mode & 0o077 == 0
    again = run_brain("keys", str(tmp_path / "k"), "--web-token")
    assert again.returncode == 2 and "exists" in again.stderr
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
    assert load_config().ops.web_port == 9181
