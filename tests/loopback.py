"""Real device servers on loopback for the bridge tests (tests/test_alpaca*.py,
tests/test_indi*.py): the INDI programs present, a free port, a wait for a server to
listen, a process group stopped whatever it left behind, an angular separation, and a
brain-side rig (a real BrainLink and a DeviceHost in a thread) that sends commands and
collects outcomes and events."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from brain.core.events import Weather
from brain.core.safety import weather_verdict
from drivers.device import Device, DeviceHost
from drivers.link import BrainLink, CommandDone, CommandFailed, DeviceEvent, DeviceSpec
from drivers.protocol import weather_values


def require_indi(simulators) -> str:
    """The path of ``indiserver``, after checking it and the ``simulators`` are on PATH
    (a clear failure if not); ``SITIAN_SKIP_INDI=1`` skips the INDI tests instead."""
    if os.environ.get("SITIAN_SKIP_INDI") == "1":
        pytest.skip("SITIAN_SKIP_INDI=1: INDI bridge tests skipped")
    missing = [exe for exe in ("indiserver", *simulators) if shutil.which(exe) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found on PATH: the INDI bridge tests need the "
                    "INDI server and simulators (apt-get install indi-bin), or set "
                    "SITIAN_SKIP_INDI=1 to skip them", pytrace=False)
    return shutil.which("indiserver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sep_deg(ra1, dec1, ra2, dec2) -> float:
    """Angular separation (Vincenty's formula: exact down to microarcseconds)."""
    a1, d1, a2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    da = a2 - a1
    num = math.hypot(math.cos(d2) * math.sin(da),
                     math.cos(d1) * math.sin(d2) - math.sin(d1) * math.cos(d2) * math.cos(da))
    den = math.sin(d1) * math.sin(d2) + math.cos(d1) * math.cos(d2) * math.cos(da)
    return math.degrees(math.atan2(num, den))


def reports_unsafe(data: dict) -> bool:
    """A bridge's weather report with the station's verdict unsafe."""
    return data["station_safe"] is False


def reports_safe(data: dict) -> bool:
    return data["station_safe"] is True


def verdict_of(config, data: dict):
    """The brain's verdict (brain.core.safety) on a weather report seen by the rig."""
    wx = Weather(data["_t"], "xl", **weather_values(data))
    return weather_verdict(config.limits, wx, data["_t"])


def listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(argv: list[str], port: int, log_path, env: dict | None = None,
                 cwd=None, timeout_s: float = 30.0,
                 ready: Callable[[], bool] | None = None) -> subprocess.Popen:
    """Start ``argv`` in its own process group (output to ``log_path``) and wait until
    ``port`` accepts connections (and ``ready()``); fails the test with the log's tail."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if listens(port) and (ready is None or ready()):
            return proc
        time.sleep(0.1)
    stop_group(proc)
    with open(log_path) as f:
        tail = f.read()[-2000:]
    pytest.fail(f"{argv[0]} did not start on port {port}:\n{tail}", pytrace=False)


def stop_group(proc: subprocess.Popen) -> None:
    """End a server started by :func:`start_server` and whatever it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)  # a test may have frozen it
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class BrainRig:
    """A real BrainLink (the brain's ROUTER) and ``devices`` served by one DeviceHost in
    a thread. ``specs``: device id -> DeviceSpec, as the brain's configuration says."""

    def __init__(self, specs: dict[str, DeviceSpec], devices: list[Device],
                 diagnostics: Callable[[], str] = lambda: ""):
        self.link = BrainLink(specs, router="tcp://127.0.0.1:*", pub=None, heartbeat_s=1.0)
        self.host = DeviceHost(devices, self.link.router_endpoint)
        self.extra = diagnostics
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.seen: list = []
        self._n = 0
        self.thread = threading.Thread(target=self._serve, name="device-host", daemon=True)
        self.thread.start()
        self.wait(lambda: set(specs) <= set(self.link.up_devices()), 15.0,
                  "the devices to be welcomed")

    def _serve(self) -> None:
        try:
            self.host.run(self.stop.is_set)
        except BaseException as exc:  # reported by the test that waits on it
            self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        self.host.close()
        self.link.close()

    def diagnostics(self) -> str:
        return (f"host thread errors: {self.errors!r}\nlink events: {self.seen[-8:]!r}\n"
                f"{self.extra()}")

    def wait(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        end = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > end or self.errors:
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n"
                            f"{self.diagnostics()}", pytrace=False)
            self.seen += self.link.poll(50)

    def weather(self, device: str, after: int, cond: Callable[[dict], bool],
                timeout_s: float, what: str) -> tuple[int, dict]:
        """The first weather report of ``device`` after the ``after``-th event seen that
        satisfies ``cond``: (its index, its data)."""
        found: list = []

        def check() -> bool:
            for k in range(after, len(self.seen)):
                e = self.seen[k]
                if (isinstance(e, DeviceEvent) and e.device == device and e.name == "weather"
                        and cond(e.data)):
                    found.append((k + 1, e))
                    return True
            return False

        self.wait(check, timeout_s, what)
        k, ev = found[0]
        return k, {**ev.data, "_t": ev.t}

    def command(self, device: str, name: str, args: dict | None = None,
                timeout_s: float = 60.0):
        """Send a command and wait for its DONE or FAILED (CommandDone/CommandFailed)."""
        self._n += 1
        cmd_id = f"test-{self._n}"
        failed = self.link.send_command(device, cmd_id, name, args or {},
                                        time.time() + timeout_s + 30.0,
                                        idempotent=name in ("open", "close", "park", "status"))
        assert failed is None, f"{name} not sent: {failed}"
        out: list = []

        def finished() -> bool:
            out.extend(e for e in self.seen if isinstance(e, CommandDone | CommandFailed)
                       and e.cmd_id == cmd_id)
            return bool(out)

        self.wait(finished, timeout_s, f"{name} {args or ''} to finish")
        return out[0]

    def done(self, device: str, name: str, args: dict | None = None,
             timeout_s: float = 60.0) -> dict:
        ev = self.command(device, name, args, timeout_s)
        assert isinstance(ev, CommandDone), (f"{name} {args} failed: {ev}\n"
                                             f"{self.diagnostics()}")
        return ev.result

    def failed(self, device: str, name: str, args: dict | None = None,
               timeout_s: float = 60.0):
        ev = self.command(device, name, args, timeout_s)
        assert isinstance(ev, CommandFailed), f"{name} {args} should have failed: {ev}"
        return ev
