"""The device side of SBP1: base classes a hardware author subclasses, and the host that
runs one or many devices over DEALER sockets.

A device implements ``cmd_<name>(args, now)`` for each command it offers. A handler
returns the ``DONE`` result (a dict) when the command finished at once, a
:class:`Pending` when it finishes later (``poll(now)`` returns the result once done, or
``None`` while it runs), or raises :class:`CommandError` (``FAILED`` with its code). The
host does the rest of docs/protocol.md: ``HELLO`` until ``WELCOME`` (with back-off), ``ACK`` at
once, ``PROGRESS`` when the work outlasts the brain's deadline, heartbeats, idempotent
replays of finished ``cmd_id``\\ s, ``abort`` cutting running commands short
(``FAILED aborted``), and the fail-safe: with no word from the brain for ``failsafe_s``
the device aborts, parks and closes on its own and reports ``fault`` when the link
returns.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from drivers import protocol as P
from drivers.clock import WorldClock


class CommandError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Pending:
    """A command still running: ``poll(now)`` gives its result when done, else None;
    ``eta`` is the expected world time of completion."""

    eta: float
    poll: Callable[[float], dict | None]


class Plan:
    """A bridge's command as steps (``start()``: True when nothing to wait for; ``done()``),
    run in order by ``advance``; ``finish(now)`` makes the result (the INDI and Alpaca
    bridges, docs/indi.md, docs/alpaca.md)."""

    def __init__(self, steps: list, finish: Callable[[float], dict]):
        self.steps, self.finish = list(steps), finish
        self.k = 0
        self.running = False
        self.over = False

    def advance(self, now: float) -> dict | None:
        try:
            while self.k < len(self.steps):
                step = self.steps[self.k]
                if not self.running:
                    if step.start():
                        self.k += 1
                        continue
                    self.running = True
                if not step.done():
                    return None
                self.running = False
                self.k += 1
            result = self.finish(now)
        except BaseException:
            self.over = True
            raise
        self.over = True
        return result


class PlanRunner:
    """One command at a time as a :class:`Plan` (the INDI and Alpaca telescopes): a new
    command while one runs is ``busy`` unless it ``preempt``s (close, park); the one cut
    short answers ``aborted``."""

    _plan: Plan | None = None
    _plan_name = ""

    def _busy(self, name: str | None = None) -> bool:
        """A command runs (that one, given ``name``)."""
        return (self._plan is not None and not self._plan.over
                and (name is None or self._plan_name == name))

    def _run(self, name: str, steps: list, finish: Callable[[float], dict], eta: float,
             now: float, preempt: bool = False) -> dict | Pending:
        if not preempt and self._busy():
            raise CommandError("busy", f"{self.id} is running {self._plan_name}")
        plan = Plan(steps, finish)
        self._plan, self._plan_name = plan, name
        result = plan.advance(now)  # the first request goes out at once
        if result is not None:
            return result

        def poll(t: float) -> dict | None:
            if self._plan is not plan:
                raise CommandError("aborted", f"{name} cut short")
            return plan.advance(t)

        return Pending(eta, poll)


def _num(v) -> bool:
    return P._num(v)


# name -> {arg: check}
ARGS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "slew": {"ra_deg": lambda v: _num(v) and 0 <= v < 360,
             "dec_deg": lambda v: _num(v) and -90 <= v <= 90},
    "expose": {"seconds": lambda v: _num(v) and 0 < v <= 3600, "obs_id": P._str,
               "field_id": P._int},
    "spectrum": {"target_id": P._str, "ra_deg": lambda v: _num(v) and 0 <= v < 360,
                 "dec_deg": lambda v: _num(v) and -90 <= v <= 90,
                 "seconds": lambda v: _num(v) and 0 < v <= 7200},
}


class Device:
    """One device. Subclasses set ``kind`` and ``capabilities`` and write handlers."""

    kind = "telescope"
    capabilities: tuple[str, ...] = ("status",)

    def __init__(self, device_id: str, site: str, group: int | None = None,
                 band: str | None = None):
        if not P.DEVICE_ID.fullmatch(device_id):
            raise ValueError(f"device id {device_id!r} does not match [a-z0-9._-]{{1,64}}")
        self.id, self.site, self.group, self.band = device_id, site, group, band

    # What subclasses provide ------------------------------------------------------
    def state(self, now: float) -> dict:
        """The device state map (``state`` plus device fields)."""
        return {"state": "idle"}

    def events(self, now: float) -> Iterable[tuple[str, dict]]:
        """Events to publish now (a weather station's reports, detections)."""
        return ()

    def failsafe(self, now: float) -> None:
        """Abort, park and close: called when the brain has been silent ``failsafe_s``."""
        for name in ("abort", "park", "close"):
            if name in self.capabilities:
                try:
                    getattr(self, f"cmd_{name}")({}, now)
                except CommandError:
                    pass

    def cmd_status(self, args: dict, now: float) -> dict:
        return self.state(now)

    # Used by the host -------------------------------------------------------------
    def hello(self, now: float) -> dict:
        body = {"kind": self.kind, "site": self.site, "capabilities": list(self.capabilities),
                "protocol": P.PROTOCOL_VERSION, "state": self.state(now)}
        if self.kind == "telescope":
            body["group"], body["band"] = int(self.group), self.band
        return body

    def execute(self, name: str, args: dict, now: float) -> dict | Pending:
        if name not in self.capabilities:
            raise CommandError("unknown_command", f"{self.id} has no command {name!r}")
        for arg, check in ARGS.get(name, {}).items():
            if arg not in args or not check(args[arg]):
                raise CommandError("bad_args", f"{name}: missing or invalid {arg!r}")
        return self.handler(name)(args, now)

    def handler(self, name: str) -> Callable[[dict, float], dict | Pending]:
        """The function that runs command ``name`` (default: the method ``cmd_<name>``)."""
        return getattr(self, f"cmd_{name}")


@dataclass
class _Link:
    """One device's side of its link to the brain."""

    device: Device
    sock: zmq.Socket
    welcomed: bool = False
    session: str = ""
    heartbeat_s: float = 1.0
    failsafe_s: float = 60.0
    last_rx: float = field(default_factory=time.monotonic)
    last_tx: float = 0.0
    next_hello: float = 0.0
    hello_backoff: float = 0.5
    failsafe_done: bool = False
    fault_to_report: str | None = None
    running: dict[str, Pending] = field(default_factory=dict)
    finished: OrderedDict = field(default_factory=OrderedDict)  # cmd_id -> (type, body, t)
    backlog: list = field(default_factory=list)  # (type, body) that could not be sent
    session_rx: float = 0.0  # when the current brain session was last heard
    t_floor: float = float("-inf")  # world time of this device's last start or outcome


class DeviceHost:
    """Runs devices in one thread, one DEALER each, connected to the brain's ROUTER.

    ``curve``: ``(server_public, client_public, client_secret)`` keys for CURVE."""

    FINISHED_KEEP = 4096
    HELLO_BACKOFF_MAX_S = 5.0

    def __init__(self, devices: Iterable[Device], endpoint: str = "tcp://127.0.0.1:5550",
                 clock: WorldClock | None = None, curve: tuple[bytes, bytes, bytes] | None = None,
                 context: zmq.Context | None = None, follow_brain_clock: bool = False,
                 command_log=None):
        self.clock = clock or WorldClock()
        # Simulated devices: take world time from the brain's WELCOME (once, and again
        # only if the two differ by more than a minute), so a rehearsal's two processes
        # agree however long each took to start; and start a command at the world time
        # the brain sent it (see _start_time).
        self.follow_brain_clock = follow_brain_clock
        self._synced = False
        self.command_log = command_log  # a text file: one JSON line per command executed
        self.ctx = context or zmq.Context.instance()
        self.poller = zmq.Poller()
        self.links: dict[str, _Link] = {}
        self._by_sock: dict[zmq.Socket, _Link] = {}
        self.protocol_errors: dict[str, int] = {}
        for dev in devices:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, dev.id.encode())
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 1000)
            s.setsockopt(zmq.RCVHWM, 1000)
            s.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a brain that is not there
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)  # exponential back-off to 5 s
            if curve is not None:
                s.curve_serverkey, s.curve_publickey, s.curve_secretkey = curve
            s.connect(endpoint)
            link = _Link(dev, s)
            self.links[dev.id] = link
            self._by_sock[s] = link
            self.poller.register(s, zmq.POLLIN)

    BACKLOG_KEEP = 10_000
    KEEP_TYPES = ("DONE", "FAILED", "EVENT")

    # Sending -----------------------------------------------------------------------
    def _send(self, link: _Link, type_: str, body: dict | None = None) -> bool:
        try:
            link.sock.send_multipart(P.encode(type_, body, self.clock.now()), zmq.NOBLOCK)
            link.last_tx = time.monotonic()
            return True
        except zmq.Again:
            # No brain connected. Outcomes and events wait for the next WELCOME; the rest
            # is left to liveness and the HELLO back-off.
            if type_ in self.KEEP_TYPES and len(link.backlog) < self.BACKLOG_KEEP:
                link.backlog.append((type_, body))
            return False

    # The loop ----------------------------------------------------------------------
    def step(self, timeout_ms: int = 50) -> None:
        etas = [p.eta for link in self.links.values() for p in link.running.values()]
        if etas:  # wake when the next command is due, not a poll interval later
            due_ms = self.clock.wall_s(min(etas) - self.clock.now()) * 1e3
            timeout_ms = int(min(timeout_ms, max(due_ms, 0.0)))
        for sock, _ in self.poller.poll(timeout_ms):
            link = self._by_sock[sock]
            for _ in range(1000):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._receive(link, frames)
        now_w, now_m = self.clock.now(), time.monotonic()
        for link in self.links.values():  # outcomes first: they are what the brain waits on
            self._complete(link, now_w)
        for link in self.links.values():
            self._service(link, now_w, now_m)

    def run(self, stop: Callable[[], bool] | None = None, timeout_ms: int = 20) -> None:
        while not (stop and stop()):
            self.step(timeout_ms)

    def close(self) -> None:
        for link in self.links.values():
            if link.welcomed:
                self._send(link, "BYE", {"reason": "driver stopping"})
            link.sock.close(0)

    def _receive(self, link: _Link, frames: list[bytes]) -> None:
        try:
            msg = P.decode(frames, P.FROM_BRAIN)
        except P.ProtocolError as e:
            self.protocol_errors[e.code] = self.protocol_errors.get(e.code, 0) + 1
            self._send(link, "ERROR", {"code": e.code, "message": e.message, "ref": e.ref})
            return
        now = self.clock.now()
        if link.welcomed or msg.type == "WELCOME":
            # Only the brain of this session is a sign of life for the fail-safe: an
            # ERROR or BYE from a brain that has not welcomed us does not count.
            link.last_rx = time.monotonic()
        if msg.type == "WELCOME":
            if self.follow_brain_clock and (not self._synced or abs(msg.t - now) > 60.0):
                self.clock.sync(msg.t)
                self._synced, now = True, msg.t
            new_session = msg.body["session"] != link.session
            replay = []
            if new_session and link.session:
                # A new brain: outcomes finished since the old one was last surely
                # listening may never have reached it; the journal reconciles them.
                since = link.session_rx - 3 * link.heartbeat_s
                replay = [(ty, b) for ty, b, t_done in link.finished.values()
                          if t_done >= since]
            link.welcomed, link.session = True, msg.body["session"]
            link.heartbeat_s = max(0.05, float(msg.body["heartbeat_s"]))
            link.failsafe_s = max(link.heartbeat_s, float(msg.body["failsafe_s"]))
            link.failsafe_done, link.hello_backoff = False, 0.5
            if link.fault_to_report:
                self._send(link, "EVENT", {"name": "fault", "data": {
                    "code": "failsafe", "message": link.fault_to_report}})
                link.fault_to_report = None
            backlog, link.backlog = link.backlog, []
            sent = {id(b) for _t, b in backlog}
            for type_, body in [*backlog, *((t, b) for t, b in replay if id(b) not in sent)]:
                self._send(link, type_, body)
            link.session_rx = time.monotonic()
            return
        if msg.type == "ERROR":
            if msg.body["code"] == "not_welcomed":  # the brain restarted: say HELLO again
                link.welcomed, link.next_hello = False, 0.0
            return
        if msg.type == "BYE":
            link.welcomed, link.next_hello = False, time.monotonic() + 1.0
            return
        if not link.welcomed:
            return
        link.session_rx = link.last_rx
        if msg.type == "COMMAND":
            self._command(link, msg.body, self._start_time(link, msg.t, now))

    # A simulated command starts when the brain sent it, if that is at most this much
    # wall time ago (the rest of a long delay is real and counts).
    LINK_CREDIT_WALL_S = 0.25

    def _start_time(self, link: _Link, t_sent: float, now: float) -> float:
        """World time at which a command starts. Hardware: now. Simulated drivers
        (``follow_brain_clock``): the COMMAND's ``t``, so the link and this host's queue,
        a millisecond at 1x but ``speed`` times that in a rehearsal, take no world time
        (the fast shell's instantaneous link); never before this device's last start or
        outcome, never in the future, at most ``LINK_CREDIT_WALL_S`` of wall time back."""
        if not self.follow_brain_clock:
            return now
        earliest = max(link.t_floor, now - self.clock.speed * self.LINK_CREDIT_WALL_S)
        t = min(now, max(float(t_sent), earliest))
        link.t_floor = t
        return t

    def _command(self, link: _Link, body: dict, now: float) -> None:
        cmd_id = body["cmd_id"]
        self._send(link, "ACK", {"cmd_id": cmd_id})
        if cmd_id in link.finished:  # already done: same outcome, not acted on twice
            type_, out, _t = link.finished[cmd_id]
            self._send(link, type_, out)
            return
        if cmd_id in link.running:
            return
        name = body["name"]
        if self.command_log is not None:
            self.command_log.write(json.dumps({"device": link.device.id, "cmd_id": cmd_id,
                                               "name": name, "args": body["args"]}) + "\n")
            self.command_log.flush()
        try:
            out = link.device.execute(name, body["args"], now)
        except CommandError as e:
            self._finish(link, cmd_id, "FAILED", {"code": e.code, "message": e.message})
            return
        if name == "abort" or name in ("close", "park"):
            for other in list(link.running):
                self._finish(link, other, "FAILED", {"code": "aborted",
                                                     "message": f"cut short by {name}"})
        if isinstance(out, Pending):
            link.running[cmd_id] = out
            if out.eta > float(body["deadline"]):
                self._send(link, "PROGRESS", {"cmd_id": cmd_id, "eta": float(out.eta)})
        else:
            self._finish(link, cmd_id, "DONE", {"result": out})

    def _finish(self, link: _Link, cmd_id: str, type_: str, body: dict) -> None:
        link.running.pop(cmd_id, None)
        link.t_floor = max(link.t_floor, self.clock.now())
        body = {"cmd_id": cmd_id, **body}
        link.finished[cmd_id] = (type_, body, time.monotonic())
        while len(link.finished) > self.FINISHED_KEEP:
            link.finished.popitem(last=False)
        if link.welcomed:
            self._send(link, type_, body)
        elif len(link.backlog) < self.BACKLOG_KEEP:
            link.backlog.append((type_, body))

    def _complete(self, link: _Link, now_w: float) -> None:
        for cmd_id, pending in list(link.running.items()):
            try:
                result = pending.poll(now_w)
            except CommandError as e:
                self._finish(link, cmd_id, "FAILED", {"code": e.code, "message": e.message})
                continue
            if result is not None:
                self._finish(link, cmd_id, "DONE", {"result": result})

    def _service(self, link: _Link, now_w: float, now_m: float) -> None:
        if link.welcomed:
            for name, data in link.device.events(now_w):
                self._send(link, "EVENT", {"name": name, "data": data})
        silent = now_m - link.last_rx
        if not link.failsafe_done and silent > link.failsafe_s and (
                link.welcomed or link.session):
            link.running.clear()
            link.device.failsafe(now_w)
            link.failsafe_done = True
            link.welcomed = False
            link.fault_to_report = (f"no word from the brain for {silent:.0f} s: "
                                    "aborted, parked and closed")
        if link.welcomed and silent > 3 * link.heartbeat_s:
            link.welcomed, link.next_hello = False, 0.0  # brain gone: HELLO with back-off
        if not link.welcomed:
            if now_m >= link.next_hello:
                self._send(link, "HELLO", link.device.hello(now_w))
                link.next_hello = now_m + link.hello_backoff
                link.hello_backoff = min(link.hello_backoff * 2, self.HELLO_BACKOFF_MAX_S)
        elif now_m - link.last_tx >= link.heartbeat_s:
            self._send(link, "HEARTBEAT", {"state": link.device.state(now_w)})
