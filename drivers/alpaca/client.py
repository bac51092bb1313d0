"""The ASCOM Alpaca client of the bridge: the server's devices (through ``alpyca``) read
and driven on one worker thread, so that the device host's loop never waits on HTTP.

Alpaca is request and answer over HTTP: nothing is pushed. The worker thread polls each
device's operational state every ``poll_s`` (one ``DeviceState`` request per device
where the driver has it, ASCOM Platform 7, else one request per property) into a
snapshot, and runs the requests the bridge queues (``call``: a slew, an exposure), each
followed by a poll at once. Readers take the snapshot under ``cond``; ``gen`` counts the
polls, so a step knows a snapshot was taken after its request had been answered.

A device whose poll fails with ``NotConnectedException`` is connected again (the
server or its driver restarted); a server that does not answer marks every device
down until it does (``connected``, ``last_error``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import requests
from alpaca import exceptions as ax
from alpaca.camera import Camera
from alpaca.dome import Dome
from alpaca.filterwheel import FilterWheel
from alpaca.observingconditions import ObservingConditions
from alpaca.safetymonitor import SafetyMonitor
from alpaca.telescope import Telescope

log = logging.getLogger("sitian.alpaca")

CLASSES = {"telescope": Telescope, "camera": Camera, "dome": Dome, "filterwheel": FilterWheel,
           "observingconditions": ObservingConditions, "safetymonitor": SafetyMonitor}
# What a driver answers when it is there but cannot do something (the rest, HTTP and
# connection errors, mean the server is not there)
ASCOM_ERRORS = (ax.ActionNotImplementedException, ax.AlpacaRequestException,
                ax.DriverException, ax.InvalidOperationException, ax.InvalidValueException,
                ax.NotConnectedException, ax.NotImplementedException,
                ax.OperationCancelledException, ax.ParkedException, ax.SlavedException,
                ax.ValueNotSetException)
NETWORK_ERRORS = (requests.RequestException, OSError, ValueError)  # ValueError: not JSON
AGE_PROP = "TimeSinceLastUpdate"  # ObservingConditions.TimeSinceLastUpdate(""), polled


class AlpacaError(RuntimeError):
    """The Alpaca server or one of its devices is not there or not usable."""


def describe(exc: BaseException) -> str:
    """One line for an alpyca or network exception."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.ConnectionError):
        m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))  # "Connection refused"
        return m.group(1).strip() if m else "cannot connect"
    if isinstance(exc, ax.AlpacaRequestException):  # not an Alpaca answer: HTTP 4xx/5xx
        text = re.sub(r"\s*\(URL [^)]*\)$", "", exc.message).strip()
        return " ".join(f"HTTP {exc.number} {text[:200]}".split())
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, requests.RequestException):
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return " ".join(str(msg).split())


class _Role:
    def __init__(self, device, props: tuple[str, ...]):
        self.device, self.props = device, props
        self.use_state: bool | None = None  # DeviceState works (None: not tried yet)
        self.ok = False
        self.error = "not polled yet"
        self.updated: float | None = None  # monotonic time of the last good poll
        self.unsupported: set[str] = set()
        self.last_connect = -1e9


class AlpacaClient:
    """Devices of one Alpaca server (``host:port``) by role (telescope, camera, dome,
    filterwheel, observingconditions, safetymonitor): :meth:`add` them, :meth:`start`,
    then read :meth:`get` and queue requests with :meth:`call`."""

    REQUEST_TIMEOUT_S = 5.0  # alpyca's, per HTTP request

    def __init__(self, host: str = "127.0.0.1", port: int = 11111, poll_s: float = 0.5):
        self.host, self.port = host, int(port)
        self.address = f"{host}:{self.port}"
        self.poll_s = float(poll_s)
        self.cond = threading.Condition()
        self.roles: dict[str, _Role] = {}
        self.values: dict[tuple[str, str], Any] = {}
        self.gen = 0
        self.connected = False  # the server answered the last poll
        self.last_error = ""
        self._queue: deque[tuple[str, Callable[[], Any], Future]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, role: str, number: int, props: tuple[str, ...]) -> None:
        """Use device ``number`` of kind ``role``, polling ``props`` (before start)."""
        self.roles[role] = _Role(CLASSES[role](self.address, int(number)), tuple(props))

    def device(self, role: str):
        return self.roles[role].device

    # Life cycle ------------------------------------------------------------------------
    def start(self, wait_s: float = 30.0) -> None:
        """Check that each device is there, connect it, poll once and start the worker;
        raises :class:`AlpacaError` naming what is missing."""
        t_end = time.monotonic() + wait_s
        while True:
            try:
                for role, r in self.roles.items():
                    self._check(role, r)
                break
            except AlpacaError:
                raise
            except NETWORK_ERRORS as exc:
                self.last_error = describe(exc)
                if time.monotonic() > t_end:
                    raise AlpacaError(f"no Alpaca server at {self.address} "
                                      f"({self.last_error})") from None
                time.sleep(0.5)
        self._poll()
        bad = {role: r.error for role, r in self.roles.items() if not r.ok}
        if bad:
            raise AlpacaError(f"Alpaca {', '.join(f'{k}: {v}' for k, v in bad.items())}")
        self._thread = threading.Thread(target=self._run, name="alpaca-worker", daemon=True)
        self._thread.start()

    def _check(self, role: str, r: _Role) -> None:
        dev = r.device
        try:
            name = dev.Name
        except ASCOM_ERRORS as exc:
            raise AlpacaError(f"Alpaca server {self.address} has no {role} "
                              f"{dev.device_number} ({describe(exc)})") from None
        try:
            if not dev.Connected:
                dev.Connected = True
        except ASCOM_ERRORS as exc:
            raise AlpacaError(f"Alpaca {role} {dev.device_number} ({name!r}) did not "
                              f"connect: {describe(exc)}") from None
        log.info("Alpaca %s %d at %s: %r", role, dev.device_number, self.address, name)

    def close(self) -> None:
        self._stop.set()
        with self.cond:
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.REQUEST_TIMEOUT_S + 1)

    # Requests --------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` (alpyca requests) on the worker thread; its Future's result, or
        exception, once answered. ``future.gen`` is the poll count when it was."""
        fut: Future = Future()
        with self.cond:
            self._queue.append((what, fn, fut))
            self.cond.notify_all()
        return fut

    def fire(self, what: str, fn: Callable[[], Any]) -> None:
        """Like :meth:`call`, not waited for: a failure is only logged."""
        def done(f: Future) -> None:
            if f.exception() is not None:
                log.warning("%s: %s", what, describe(f.exception()))
        self.call(what, fn).add_done_callback(done)

    # Reading ---------------------------------------------------------------------------
    def get(self, role: str, prop: str, default=None):
        with self.cond:
            return self.values.get((role, prop), default)

    def ok(self, role: str) -> bool:
        r = self.roles.get(role)
        return r is not None and self.connected and r.ok

    def updated(self, role: str) -> float | None:
        r = self.roles.get(role)
        return None if r is None else r.updated

    def down(self) -> list[str]:
        """The roles not answering now (every one while the server does not)."""
        return [f"{k}: {r.error}" for k, r in self.roles.items()
                if not (self.connected and r.ok)]

    # The worker ------------------------------------------------------------------------
    def _run(self) -> None:
        next_poll = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            with self.cond:
                self.cond.wait_for(lambda: self._queue or self._stop.is_set(),
                                   timeout=max(0.0, next_poll - time.monotonic()))
                jobs = list(self._queue)
                self._queue.clear()
            for what, fn, fut in jobs:
                try:
                    result = fn()
                except Exception as exc:  # handed to whoever waits on the future
                    fut.gen = self.gen
                    fut.set_exception(exc)
                    if isinstance(exc, NETWORK_ERRORS):
                        self.last_error = describe(exc)
                    log.debug("%s: %s", what, describe(exc))
                else:
                    fut.gen = self.gen
                    fut.set_result(result)
            if jobs or time.monotonic() >= next_poll:
                self._poll()
                next_poll = time.monotonic() + self.poll_s

    def _poll(self) -> None:
        out: dict[tuple[str, str], Any] = {}
        server_ok = True
        for role, r in self.roles.items():
            if not server_ok:
                r.ok, r.error = False, f"no answer from {self.address} ({self.last_error})"
                continue
            try:
                out.update({(role, k): v for k, v in self._read(r).items()})
                r.ok, r.error, r.updated = True, "", time.monotonic()
            except ax.NotConnectedException as exc:
                r.ok, r.error = False, f"not connected ({describe(exc)})"
                self._reconnect(role, r)
            except ASCOM_ERRORS as exc:
                r.ok, r.error = False, describe(exc)
            except NETWORK_ERRORS as exc:
                server_ok = False
                self.last_error = describe(exc)
                r.ok, r.error = False, f"no answer from {self.address} ({self.last_error})"
            except Exception as exc:  # an answer of the wrong shape: this device is unusable
                r.ok, r.error = False, f"unexpected answer ({type(exc).__name__}: {exc})"
        with self.cond:
            if server_ok and not self.connected:
                log.info("Alpaca server %s answers", self.address)
            elif not server_ok and self.connected:
                log.warning("lost the Alpaca server %s (%s)", self.address, self.last_error)
            self.connected = server_ok
            self.values.update(out)
            self.gen += 1
            self.cond.notify_all()

    def _read(self, r: _Role) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if r.use_state is not False:
            try:
                items = r.device.DeviceState
                values = {str(i["Name"]): i["Value"] for i in items}
                r.use_state = True
            except ax.NotConnectedException:
                raise
            except ASCOM_ERRORS:
                if r.use_state:
                    raise
                r.use_state = False  # not a Platform 7 driver: property by property
        for prop in r.props:
            if prop in values or prop in r.unsupported:
                continue
            try:
                values[prop] = (r.device.TimeSinceLastUpdate("") if prop == AGE_PROP
                                else getattr(r.device, prop))
            except (ax.NotImplementedException, ax.ValueNotSetException,
                    ax.InvalidOperationException) as exc:
                if isinstance(exc, ax.NotImplementedException):
                    r.unsupported.add(prop)
                values[prop] = None
        return {k: values.get(k) for k in r.props}

    def _reconnect(self, role: str, r: _Role) -> None:
        now = time.monotonic()
        if now - r.last_connect < 5.0:
            return
        r.last_connect = now
        try:
            r.device.Connected = True
            log.info("Alpaca %s %d connected again", role, r.device.device_number)
        except (*ASCOM_ERRORS, *NETWORK_ERRORS) as exc:
            log.warning("cannot connect Alpaca %s: %s", role, describe(exc))
