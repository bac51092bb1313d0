"""The daemon welcomes its devices while its models are still loading (issue 19, part 5).

``start_daemon`` with the default hosting (a real local Ray, the operator desk, Ray
Serve's API) where the classifier and the policy are held back by the test and the
planner is a Serve deployment whose replica starts only when the test lets it: the
devices (real ZeroMQ DEALERs on loopback, ``drivers.device.DeviceHost``) are welcomed, the
survey commands them, follow-up stays off and the API says the planner is loading; each
part is taken up once it is let go. No timing is asserted beyond generous bounds (the
start's speed is measured by ``tests/bench/bench_daemon_start.py``)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from brain.config import config_from_dict
from brain.planner.api import start_planner
from brain.shells.daemon_models import model_stages
from brain.shells.daemon_start import start_daemon
from drivers.clock import WorldClock, parse_start
from drivers.device import Device, DeviceHost
from policies.classifier import ARTIFACT_DIR
from tests.conftest import REPO

START = "2026-12-15T12:00:00"  # Xinglong is dark from about 10:50 UTC
SPEED = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None, token: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} | (
        {"Authorization": f"Bearer {token}"} if token else {}))
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:  # Serve's proxy before the API's route is there: plain text
            return exc.code, {}


def wait_for(pred, timeout_s: float, what: str, step=None):
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if step is not None:
            step()
        try:
            if pred():
                return
        except OSError:
            pass  # the API is not listening yet
        if step is None:
            time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class SlowPlanner:
    """A planner deployment whose replica starts once ``gate`` (a file) exists."""

    gate = ""

    def __init__(self, config_dict: dict):
        while not Path(self.gate).exists():
            time.sleep(0.1)

    def plan(self, request: str, state: dict) -> dict:
        return {"request": request, "calls": [], "valid": True, "problems": [],
                "latency_s": 0.0}


class Scope(Device):
    """A telescope that does what it is told at once; records the commands."""

    capabilities = ("slew", "expose", "abort", "park", "open", "close", "status")

    def __init__(self, band: str):
        super().__init__(f"xl.g01.{band}", "xl", 1, band)
        self.commands: list[str] = []

    def handler(self, name):
        def run(args, now):
            self.commands.append(name)
            if name == "expose":
                return {"obs_id": args["obs_id"], "t_start": now, "t_end": now + 1.0,
                        "limiting_mag": 20.5, "seeing_arcsec": 1.2, "airmass": 1.1}
            if name == "slew":
                return {"ra_deg": args["ra_deg"], "dec_deg": args["dec_deg"],
                        "alt_deg": 60.0, "az_deg": 10.0}
            return {}
        return run


class Spectrograph(Scope):
    kind = "spectrograph"
    capabilities = ("spectrum", "abort", "open", "close", "park", "status")

    def __init__(self):
        Device.__init__(self, "xl.spec", "xl")
        self.commands = []


class Station(Device):
    kind = "weather"

    def __init__(self):
        super().__init__("xl.wx", "xl")

    def events(self, now):
        return [("weather", {"wind_mps": 2.0, "humidity": 0.3, "rain": False, "cloud": 0.1,
                             "seeing_arcsec": 1.2, "dew_margin_c": 5.0})]


@pytest.fixture
def small_config(tmp_path):
    """Xinglong alone, two groups, its spectrograph, a sparse sky: quick to start."""
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["sites"] = [dict(d["sites"][0], groups=2)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("sky", {})["density_scale"] = 0.05
    return config_from_dict(d)


@pytest.fixture
def local_ray(monkeypatch):
    """The daemon starts its own local Ray (as brain run does); stopped afterwards."""
    import ray
    from ray import cloudpickle

    ray_tmp = tempfile.mkdtemp(prefix="sr-", dir="/tmp")  # Ray's socket paths: short
    monkeypatch.setenv("BRAIN_RAY_TMP", ray_tmp)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SlowPlanner, by value
    switch = sys.getswitchinterval()
    yield
    sys.setswitchinterval(switch)
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_devices_are_welcomed_and_surveyed_while_the_models_load(small_config, tmp_path,
                                                                  local_ray):
    config = small_config
    api_port = free_port()
    held = {"classifier": threading.Event(), "policy": threading.Event()}
    SlowPlanner.gate = str(tmp_path / "planner-go")

    def holding(name, load):
        return lambda: (held[name].wait(), load())[1]

    stages = []
    for name, load, after in model_stages(config, "ray", ARTIFACT_DIR, "greedy", 0, None,
                                          api_port):
        if name in held:
            load = holding(name, load)
        elif name == "planner":
            load = lambda: start_planner(config, {"num_cpus": 0}, SlowPlanner)  # noqa: E731
        stages.append((name, load, after))
    token = "page-token-0123456789"  # the operator page (docs/operator-page.md)
    (tmp_path / "web.token").write_text(token)
    page = f"http://127.0.0.1:{(web_port := free_port())}/api"
    d = start_daemon(config, str(tmp_path / "journal.sqlite"), parse_start(START), SPEED,
                     metrics_port=0, policy="greedy",
                     router=f"tcp://127.0.0.1:{free_port()}",
                     pub=f"tcp://127.0.0.1:{free_port()}", api_port=api_port, stages=stages,
                     web_port=web_port, web_token=str(tmp_path / "web.token"))
    models = d.background[0]
    loop = threading.Thread(target=d.run, daemon=True)
    loop.start()
    scopes = [Scope(b) for b in config.camera.bands]
    spec = Spectrograph()
    host = DeviceHost([*scopes, Station(), spec], d.link.router_endpoint,
                      WorldClock(parse_start(START), SPEED), follow_brain_clock=True)
    step = lambda: host.step(20)  # noqa: E731
    api = f"http://127.0.0.1:{api_port}"
    try:
        # Every device is welcomed while the classifier and the policy are held back.
        wait_for(lambda: all(link.welcomed for link in host.links.values()), 60,
                 "every device welcomed", step)
        assert models.status["classifier"] == models.status["policy"] == "loading"
        # The survey runs: the site opens on the station's weather, the group exposes.
        wait_for(lambda: all("expose" in s.commands for s in scopes), 120,
                 "exposures from the survey", step)
        assert models.status["classifier"] == models.status["policy"] == "loading"
        # Follow-up has not started: the spectrograph is told nothing.
        assert d.core.followup is None and spec.commands == []
        # The operators' API answers, and says the planner is loading.
        wait_for(lambda: http(api + "/status")[0] == 200, 240, "the API", step)
        code, status = http(api + "/status")
        assert status["planner"] == "loading" and "xl" in status["sites"]
        code, asked = http(api + "/ask", {"request": "what is the status of the array?"})
        assert code == 503 and asked["planner"] == "loading"
        assert "loading" in asked["error"] and "\n" not in asked["error"]
        # The operator page says so too, and its planner box gets the API's answer.
        assert http(page + "/state")[1]["state"]["planner"] == "loading"
        code, asked = http(page + "/ask", {"request": "status of the array?"}, token)
        assert code == 503 and "loading" in asked["error"]
        assert spec.commands == []
        # The policy is ready: follow-up starts, and opens the spectrograph (the site is
        # open). Then the classifier, then the planner.
        held["policy"].set()
        wait_for(lambda: "open" in spec.commands, 60, "follow-up to open the spectrograph",
                 step)
        assert d.core.followup is not None and d.core.followup.policy.name == "greedy"
        held["classifier"].set()
        wait_for(lambda: models.status["classifier"] == "ready", 120, "the classifier",
                 step)
        assert models.status["planner"] == "loading"
        Path(SlowPlanner.gate).touch()
        wait_for(lambda: http(api + "/status")[1].get("planner") == "ready", 120,
                 "the planner", step)
        code, asked = http(api + "/ask", {"request": "what is the status of the array?"})
        assert code == 200 and asked["request"] == "what is the status of the array?"
        code, plan = http(page + "/ask", {"request": "what is the status of the array?"},
                          token)
        assert code == 200 and plan["status"] == "answered" and plan["id"] == 1  # no action
        # The page shows the daemon loop's latest snapshot: it catches up on the next one.
        wait_for(lambda: http(page + "/state")[1]["state"]["planner"] == "ready", 60,
                 "the page to show the planner ready", step)
        state = http(page + "/state")[1]
        assert state["plans"][0]["request"] == plan["request"]
        assert state["state"]["hosting"] == "ray"
        assert loop.is_alive()
    finally:
        for event in held.values():
            event.set()
        Path(SlowPlanner.gate).touch()
        d.stopping = True
        loop.join(30)
        host.close()
    assert not loop.is_alive()
