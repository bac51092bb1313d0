"""Daemon start: how soon after ``brain run`` the array is up (issue 19, part 5).

``brain sim-drivers`` serves 59 of the default array's 60 devices; the 60th
(``PROBE``, a spectrograph) is a raw SBP1 DEALER in this process that says HELLO once,
before the brain is started, and heartbeats after its WELCOME. Measured from the moment
``brain run`` is started (as a restarted service would be, the drivers already running):

* ``router_bound_s``: the probe's TCP connection is accepted (ZeroMQ retries every
  0.1 s), i.e. the daemon's ROUTER is bound;
* ``first_welcome_s``: the probe's queued HELLO is answered (``welcome_after_bind_s``:
  the same, from the bind; the target is under 1 s);
* ``all_up_s``: ``sitian_device_up`` sums to 60 on ``/metrics`` (scraped every 0.2 s;
  the target is under 20 s with default hosting, far inside the devices' 60 s fail-safe);
* ``planner_ready_s`` (``--planner``): the operators' API reports the planner ready.

Runs, with the default hosting (Ray, the model actors, Ray Serve and the vLLM planner):
this tree's ``brain run``, and as the in-run baseline the same start at ``--baseline``
(default ``BASELINE_REV``, the start before issue 19's part 5, which brought the loop up
only after the planner's engine), checked out in a temporary git worktree. Prints one
JSON line, with the load average: on a shared 2-core machine other work slows both.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_daemon_start.py [--planner] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import stop_procs  # noqa: E402

from brain.config import load_config  # noqa: E402
from brain.shells.daemon import device_specs  # noqa: E402
from drivers import protocol as P  # noqa: E402

START = "2026-12-15T12:00:00"  # the README's rehearsal
SPEED = "60"
PROBE = "xl.spec"
TIMEOUT_S = 240.0
BASELINE_REV = "1390f35"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _devices_up(metrics_port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=2) as r:
            text = r.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    return int(sum(float(v) for v in re.findall(r"^sitian_device_up\{[^}]*\} (\S+)$",
                                                 text, re.M)))


def _planner_ready(api_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/status", timeout=2) as r:
            # the baseline's API has no "planner": it answered once the planner was up
            return json.loads(r.read()).get("planner", "ready") == "ready"
    except (OSError, ValueError, urllib.error.URLError):
        return False


class Probe:
    """One device as a raw DEALER: HELLO queued before the brain binds (ZeroMQ delivers
    it on connection), then HEARTBEATs; a COMMAND is acknowledged and refused."""

    def __init__(self, ctx: zmq.Context, endpoint: str, site: str):
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.IDENTITY, PROBE.encode())
        self.s.setsockopt(zmq.LINGER, 0)
        self.mon = self.s.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.s.connect(endpoint)
        self.site = site
        self.connected = self.welcomed = None
        self.next_beat = 0.0
        self._send("HELLO", {"kind": "spectrograph", "site": site,
                             "capabilities": ["status"], "protocol": 1,
                             "state": {"state": "closed"}})

    def _send(self, type_: str, body: dict) -> None:
        self.s.send_multipart([P.MAGIC, msgpack.packb({
            "type": type_, "id": os.urandom(4).hex(), "t": time.time(), "body": body})])

    def step(self, t0: float) -> None:
        while self.connected is None and self.mon.poll(0):
            recv_monitor_message(self.mon)
            self.connected = time.monotonic() - t0
        while self.s.poll(0):
            msg = P.decode(self.s.recv_multipart(), P.FROM_BRAIN)
            if msg.type == "WELCOME" and self.welcomed is None:
                self.welcomed = time.monotonic() - t0
            elif msg.type == "COMMAND":
                self._send("ACK", {"cmd_id": msg.body["cmd_id"]})
                self._send("FAILED", {"cmd_id": msg.body["cmd_id"], "code": "busy",
                                      "message": "bench probe"})
        if self.welcomed is not None and time.monotonic() >= self.next_beat:
            self._send("HEARTBEAT", {})
            self.next_beat = time.monotonic() + 0.5

    def close(self) -> None:
        self.s.disable_monitor()
        self.mon.close(0)
        self.s.close(0)


def one_start(label: str, tree: Path, planner: bool, tmp: Path) -> dict:
    router, pub = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    metrics_port, api_port = _port(), _port()
    config = load_config()
    others = sorted(d for d in device_specs(config) if d != PROBE)
    link = ["--start", START, "--speed", SPEED, "--router", router, "--pub", pub]
    env = dict(os.environ, BRAIN_RAY_TMP=tempfile.mkdtemp(prefix="sr-", dir="/tmp"),
               PYTHONPATH=str(tree))
    log = (tmp / f"run-{label}.log").open("a")
    drivers = subprocess.Popen([sys.executable, "-m", "brain", "sim-drivers", *link,
                                "--only", ",".join(others)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=log, text=True)
    drivers.stdout.readline()  # "serving 59 simulated devices ...": the drivers are up
    ctx = zmq.Context()
    probe = Probe(ctx, router, PROBE.split(".")[0])
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    daemon = subprocess.Popen([sys.executable, "-m", "brain", "run", *link, "--api-port",
                               str(api_port), "--journal",
                               str(tmp / f"{label}-{time.time_ns()}" / "journal.sqlite"),
                               "--metrics-port", str(metrics_port)],
                              cwd=tree, stdout=log, stderr=subprocess.STDOUT, env=env)
    out = {"run": label, "router_bound_s": None, "first_welcome_s": None,
           "all_up_s": None}
    if planner:
        out["planner_ready_s"] = None
    next_scrape = 0.0
    try:
        while time.monotonic() - t0 < TIMEOUT_S and daemon.poll() is None:
            probe.step(t0)
            now = time.monotonic()
            if now >= next_scrape:
                next_scrape = now + 0.2
                if out["all_up_s"] is None and _devices_up(metrics_port) == 60:
                    out["all_up_s"] = round(now - t0, 2)
                if planner and out["planner_ready_s"] is None and _planner_ready(api_port):
                    out["planner_ready_s"] = round(now - t0, 2)
            if (out["all_up_s"] is not None and probe.welcomed is not None
                    and (not planner or out["planner_ready_s"] is not None)):
                break
            time.sleep(0.01)
    finally:
        stop_procs((daemon, drivers), 30)
        probe.close()
        ctx.destroy(0)
        log.close()
    out["router_bound_s"] = None if probe.connected is None else round(probe.connected, 2)
    out["first_welcome_s"] = None if probe.welcomed is None else round(probe.welcomed, 2)
    if probe.connected is not None and probe.welcomed is not None:
        out["welcome_after_bind_s"] = round(probe.welcomed - probe.connected, 2)
    out["load_avg_1min"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--planner", action="store_true",
                    help="also wait for the API to report the planner ready")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--baseline", default=BASELINE_REV,
                    help="git revision of the baseline start ('none': no baseline)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-"))
    old = None
    if args.baseline != "none":
        old = tmp / "baseline-tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline],
                       cwd=REPO, check=True, capture_output=True)
    runs = []
    try:
        for _ in range(args.runs):
            runs.append(one_start("this", REPO, args.planner, tmp))
            if old is not None:
                runs.append(one_start("baseline", old, args.planner, tmp))
    finally:
        if old is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           check=False, capture_output=True)
    worst = lambda label, k: max((r[k] for r in runs if r["run"] == label  # noqa: E731
                                  and r.get(k) is not None), default=None)
    keys = ("router_bound_s", "first_welcome_s", "welcome_after_bind_s", "all_up_s",
            *(("planner_ready_s",) if args.planner else ()))
    print(json.dumps({
        "bench": "daemon_start", "cpus": os.cpu_count(), "runs": runs,
        "this_max": {k: worst("this", k) for k in keys},
        "baseline": args.baseline,
        "baseline_max": {k: worst("baseline", k) for k in keys},
        "targets": {"all_up_s": 20.0, "welcome_after_bind_s": 1.0, "device_failsafe_s": 60.0},
        "logs": str(tmp),
    }), flush=True)


if __name__ == "__main__":
    main()
