"""The brain's side of SBP1: one ROUTER for every device link and a PUB event feed.

:class:`BrainLink` knows nothing about scheduling. It welcomes configured devices,
answers every malformed message with exactly one ``ERROR`` (and otherwise ignores it),
tracks each command from ``COMMAND`` to ``DONE``/``FAILED`` (ACK within 1 s of wall time,
deadline in world time, extended by ``PROGRESS``), sends heartbeats, declares a device
dead after 3 silent heartbeat intervals, and hands the brain :class:`LinkEvent`\\ s. A
late or duplicate ``DONE``/``FAILED`` is counted and dropped, never delivered twice.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from zmq.auth.thread import ThreadAuthenticator

from drivers import protocol as P
from drivers.clock import WorldClock
from drivers.endpoint import is_loopback
from drivers.keys import authorised_devices, may_be
from drivers.loopmetrics import LoopCollector, LoopHistogram


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What the configuration says about a device id."""

    kind: str
    site: str
    group: int | None = None
    band: str | None = None


# What the link reports to the brain --------------------------------------------------
@dataclass(slots=True)
class DeviceUp:
    t: float
    device: str
    state: dict


@dataclass(slots=True)
class DeviceDown:
    t: float
    device: str
    reason: str


@dataclass(slots=True)
class CommandDone:
    t: float
    device: str
    cmd_id: str
    result: dict


@dataclass(slots=True)
class CommandFailed:
    """``code`` is the device's, or ``timeout`` (no ACK in time, deadline passed),
    ``device_fault`` (device not connected) or ``unknown`` (link lost mid-command: the
    outcome of a non-idempotent command is unknown and it is never resent blindly)."""

    t: float
    device: str
    cmd_id: str
    code: str
    message: str


@dataclass(slots=True)
class DeviceEvent:
    t: float  # the device's world time stamp
    device: str
    name: str
    data: dict


@dataclass(slots=True)
class LateReply:
    """A DONE/FAILED for a command this link no longer tracks (finished, timed out, or
    sent by an earlier brain process). Never acted on as a live reply; the daemon checks
    it against the journal (an exposure that ended while the brain was down)."""

    t: float
    device: str
    cmd_id: str
    ok: bool
    body: dict


LinkEvent = DeviceUp | DeviceDown | CommandDone | CommandFailed | DeviceEvent | LateReply


@dataclass
class _Inflight:
    name: str
    idempotent: bool
    sent_wall: float
    deadline: float
    acked: bool = False


@dataclass
class _Peer:
    spec: DeviceSpec
    welcomed: bool = False
    last_rx: float = 0.0
    last_tx: float = 0.0
    state: dict = field(default_factory=dict)
    inflight: dict[str, _Inflight] = field(default_factory=dict)
    spoke: bool = False  # said anything but HELLO since its WELCOME


class SecurityError(ValueError):
    pass


class LinkMetrics:
    """The link's counters, plain on the loop (drivers.loopmetrics); exported to
    Prometheus when a registry is given, by a collector that reads them at scrape time
    (device up and heartbeat age are read from the peers then, too)."""

    def __init__(self, registry=None, devices: list[str] = (), link=None):
        self.counts: dict[tuple, int] = {}
        self.devices = list(devices)
        self.link = link
        self.latency_h = None
        if registry is not None:
            self.latency_h = LoopHistogram("sitian_command_latency_seconds",
                                           "Wall seconds from COMMAND to DONE/FAILED",
                                           (.001, .005, .01, .05, .1, .5, 1, 5, 30, 120,
                                            600), ("name",))
            registry.register(LoopCollector([self.latency_h], extra=self._families))

    def inc(self, key: str, *labels: str) -> None:
        k = (key, *labels)
        self.counts[k] = self.counts.get(k, 0) + 1

    def error(self, code: str) -> None:
        self.inc("errors", code if code in P.ERROR_CODES else "other")

    def finished(self, name: str, result: str, seconds: float) -> None:
        """A command's DONE/FAILED: counted by name and result, its latency observed
        (one call per reply, written out: this is the loop's hottest metric)."""
        c, k = self.counts, ("commands", name, result)
        c[k] = c.get(k, 0) + 1
        h = self.latency_h
        if h is not None:
            s = h.series.get((name,))
            if s is None:
                s = h.series[(name,)] = [0.0] * (len(h.bounds) + 2)
            s[bisect_left(h.bounds, seconds)] += 1
            s[-1] += seconds

    def _families(self):
        counts = list(self.counts.items())
        errors = CounterMetricFamily("sitian_protocol_errors_total",
                                     "Malformed or refused protocol messages", labels=["code"])
        seen = {k[1]: v for k, v in counts if k[0] == "errors"}
        for code in (*P.ERROR_CODES, "other"):
            errors.add_metric([code], seen.get(code, 0))
        yield errors
        commands = CounterMetricFamily("sitian_commands_total", "Commands by name and result",
                                       labels=["name", "result"])
        for k, v in counts:
            if k[0] == "commands":
                commands.add_metric([k[1], k[2]], v)
        yield commands
        ahead = CounterMetricFamily("sitian_protocol_future_stamped_total",
                                    "Messages refused (bad_message) for a time stamp beyond "
                                    "the tolerance ahead of the brain's world clock",
                                    labels=["device"])
        seen = {k[1]: v for k, v in counts if k[0] == "ahead"}
        for device in dict.fromkeys([*self.devices, *seen]):
            ahead.add_metric([device], seen.get(device, 0))
        yield ahead
        late = CounterMetricFamily("sitian_protocol_late_replies_total",
                                   "Duplicate or late DONE/FAILED, ignored")
        late.add_metric([], sum(v for k, v in counts if k[0] == "late"))
        yield late
        up = GaugeMetricFamily("sitian_device_up", "1 when the device is welcomed and alive",
                               labels=["device"])
        age = GaugeMetricFamily("sitian_device_heartbeat_age_seconds",
                                "Wall seconds since the device was last heard",
                                labels=["device"])
        peers = dict(self.link.peers) if self.link is not None else {}
        now = time.monotonic()
        for device in dict.fromkeys([*self.devices, *peers]):
            peer = peers.get(device)
            alive = peer is not None and peer.welcomed
            up.add_metric([device], float(alive))
            if alive:
                age.add_metric([device], max(0.0, now - peer.last_rx))
        yield up
        yield age


class BrainLink:
    ACK_TIMEOUT_S = 1.0
    # World time is the brain's: a message stamped further ahead of its world clock than
    # this many wall seconds (times a rehearsal's speed; at least this many world
    # seconds) is refused (docs/safety.md).
    AHEAD_TOLERANCE_WALL_S = 5.0

    def __init__(self, devices: dict[str, DeviceSpec] | Callable[[str], DeviceSpec | None],
                 router: str = "tcp://127.0.0.1:5550", pub: str | None = "tcp://127.0.0.1:5551",
                 clock: WorldClock | None = None, heartbeat_s: float = 1.0,
                 failsafe_s: float = 60.0, security: str = "none",
                 keys_dir: str | os.PathLike | None = None, registry=None,
                 context: zmq.Context | None = None, hwm: int = 10_000,
                 session: str | None = None):
        self._lookup = devices.get if isinstance(devices, dict) else devices
        self.clock = clock or WorldClock()
        self.heartbeat_s, self.failsafe_s = float(heartbeat_s), float(failsafe_s)
        self.session = session or os.urandom(8).hex()
        self.ctx = context or zmq.Context.instance()
        self.metrics = LinkMetrics(registry, list(devices) if isinstance(devices, dict) else [],
                                   link=self)
        self.last_wait_s = 0.0
        self.peers: dict[str, _Peer] = {}
        self._done: OrderedDict[str, None] = OrderedDict()  # finished cmd_ids (dedup)
        self._auth = None
        self._key_devices: dict | None = None  # CURVE: public key -> device globs
        if security not in ("none", "curve"):
            raise SecurityError(f"security must be 'curve' or 'none', not {security!r}")
        for ep in (router, pub):
            if ep and security == "none" and not is_loopback(ep):
                raise SecurityError(f"refusing security 'none' on non-loopback {ep}: "
                                    "use curve (brain keys DIR)")
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted device takes its id back
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, hwm)
        self.router.setsockopt(zmq.RCVHWM, hwm)
        self.pub = None
        if security == "curve":
            self._setup_curve(keys_dir)
        self.router.bind(router)
        self.router_endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        if pub:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.setsockopt(zmq.SNDHWM, hwm)
            if security == "curve":
                self.pub.curve_server = True
                self.pub.curve_secretkey = self.router.curve_secretkey
                self.pub.curve_publickey = self.router.curve_publickey
            self.pub.bind(pub)
            self.pub_endpoint = self.pub.getsockopt(zmq.LAST_ENDPOINT).decode()

    def _setup_curve(self, keys_dir) -> None:
        if keys_dir is None:
            raise SecurityError("curve security needs a keys directory (brain keys DIR)")
        keys = Path(keys_dir)
        secret = keys / "brain.key_secret"
        authorised = keys / "authorized"
        if not secret.is_file() or not authorised.is_dir():
            raise SecurityError(f"{keys} lacks brain.key_secret or authorized/ "
                                "(create them with: brain keys DIR)")
        pub_key, sec_key = zmq.auth.load_certificate(secret)
        self._auth = ThreadAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(authorised))
        self._key_devices = authorised_devices(authorised)
        self.router.curve_server = True
        self.router.curve_publickey, self.router.curve_secretkey = pub_key, sec_key

    # Sending -----------------------------------------------------------------------
    def _send(self, device: str, type_: str, body: dict | None = None) -> bool:
        try:
            self.router.send_multipart([device.encode(), *P.encode(type_, body,
                                                                   self.clock.now())],
                                       zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):  # gone (ROUTER_MANDATORY) or backed up
            return False
        peer = self.peers.get(device)
        if peer is not None:
            peer.last_tx = time.monotonic()
        return True

    def publish(self, topic: str, type_: str, body: dict) -> None:
        if self.pub is None:
            return
        try:
            self.pub.send_multipart([topic.encode(), P.encode(type_, body,
                                                              self.clock.now())[1]], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def send_command(self, device: str, cmd_id: str, name: str, args: dict[str, Any],
                     deadline: float, idempotent: bool) -> CommandFailed | None:
        """Put a command on the wire; a device that is not up fails it at once."""
        peer = self.peers.get(device)
        now = self.clock.now()
        if peer is None or not peer.welcomed:
            self.metrics.inc("commands", name, "device_fault")
            return CommandFailed(now, device, cmd_id, "device_fault", f"{device} is not up")
        body = {"cmd_id": cmd_id, "name": name, "args": args, "deadline": float(deadline),
                "idempotent": bool(idempotent)}
        if not self._send(device, "COMMAND", body):
            self.metrics.inc("commands", name, "device_fault")
            return CommandFailed(now, device, cmd_id, "device_fault", f"{device} unreachable")
        peer.inflight[cmd_id] = _Inflight(name, idempotent, time.monotonic(), float(deadline))
        return None

    def up_devices(self) -> list[str]:
        return [d for d, p in self.peers.items() if p.welcomed]

    # Receiving ---------------------------------------------------------------------
    def poll(self, timeout_ms: int = 10, max_messages: int = 5000) -> list[LinkEvent]:
        out: list[LinkEvent] = []
        w0 = time.perf_counter()
        ready = self.router.poll(timeout_ms, zmq.POLLIN)
        self.last_wait_s = time.perf_counter() - w0  # idle time, for the loop-lag metric
        if ready:
            for _ in range(max_messages):
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK,
                                                        copy=self._key_devices is None)
                except zmq.Again:
                    break
                key = None
                if self._key_devices is not None:  # CURVE: who is speaking (ZAP User-Id)
                    try:
                        key = frames[-1].get("User-Id").encode()
                    except (zmq.ZMQError, AttributeError):
                        key = b""
                    frames = [f.bytes for f in frames]
                self._receive(frames, out, key)
        out += self.maintain()
        return out

    def _error(self, identity: bytes, code: str, message: str, ref: str | None) -> None:
        self.metrics.error(code)
        try:
            dev = identity.decode("ascii")
        except UnicodeDecodeError:
            dev = None
        if dev is not None:
            self._send(dev, "ERROR", {"code": code, "message": message, "ref": ref})
        else:  # an identity we cannot spell back is still answered, byte for byte
            try:
                self.router.send_multipart([identity, *P.encode(
                    "ERROR", {"code": code, "message": message, "ref": ref})], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _receive(self, frames: list[bytes], out: list[LinkEvent],
                 key: bytes | None = None) -> None:
        identity, frames = frames[0], frames[1:]
        try:
            msg = P.decode(frames, P.FROM_DEVICE)
        except P.ProtocolError as e:
            self._error(identity, e.code, e.message, e.ref)
            return
        try:
            device = identity.decode("ascii")
        except UnicodeDecodeError:
            device = ""
        spec = self._lookup(device) if P.DEVICE_ID.fullmatch(device) else None
        if key is not None and spec is not None:
            if not may_be(self._key_devices.get(key, ()), device):  # unknown key: none
                self._error(identity, "unauthorised",
                            f"this CURVE key may not speak as {device}", msg.id)
                return
        if msg.type == "HELLO":
            if spec is None:
                self._error(identity, "unknown_device",
                            f"{device[:64]!r} is not in the configuration", msg.id)
                return
            problem = self._hello_mismatch(spec, msg.body)
            if problem:
                self._error(identity, "bad_message", problem, msg.id)
                return
            self._welcome(device, spec, msg, out)
            return
        peer = self.peers.get(device)
        if peer is None or not peer.welcomed:
            self._error(identity, "not_welcomed", "say HELLO first", msg.id)
            return
        now = self.clock.now()
        # Not HELLO: a simulated driver learns the brain's time from the WELCOME.
        tolerance = self.AHEAD_TOLERANCE_WALL_S * max(1.0, self.clock.speed)
        if msg.t - now > tolerance:
            self.metrics.inc("ahead", device)
            self._error(identity, "bad_message", f"stamped {msg.t - now:.0f} s ahead of the "
                        f"brain's world clock (tolerance {tolerance:g} s)", msg.id)
            return
        peer.last_rx, peer.spoke = time.monotonic(), True
        body = msg.body
        if msg.type == "HEARTBEAT":
            if "state" in body:
                peer.state = body["state"]
        elif msg.type == "ACK":
            inf = peer.inflight.get(body["cmd_id"])
            if inf is not None:
                inf.acked = True
        elif msg.type == "PROGRESS":
            inf = peer.inflight.get(body["cmd_id"])
            if inf is not None:
                inf.acked = True
                # The device finishes at its eta; its DONE needs a moment to arrive, so
                # the new deadline is the eta plus one ACK interval of wall time.
                inf.deadline = max(inf.deadline, float(body["eta"])
                                   + self.ACK_TIMEOUT_S * self.clock.speed)
        elif msg.type in ("DONE", "FAILED"):
            inf = peer.inflight.pop(body["cmd_id"], None)
            if inf is None:
                self.metrics.inc("late")
                out.append(LateReply(now, device, body["cmd_id"], msg.type == "DONE", body))
                return
            self._mark_done(body["cmd_id"])
            if msg.type == "DONE":
                self.metrics.finished(inf.name, "done", time.monotonic() - inf.sent_wall)
                out.append(CommandDone(now, device, body["cmd_id"], body["result"]))
            else:
                self.metrics.finished(inf.name, body["code"] if body["code"] in P.ERROR_CODES
                                      else "other", time.monotonic() - inf.sent_wall)
                out.append(CommandFailed(now, device, body["cmd_id"], body["code"],
                                         body["message"]))
        elif msg.type == "EVENT":
            if body["name"] == "state":
                peer.state = body["data"]
            out.append(DeviceEvent(msg.t, device, body["name"], body["data"]))
            self.publish(device, "EVENT", body)
        elif msg.type == "BYE":
            self._down(device, f"said BYE: {body['reason'][:200]}", out)
        # ERROR from a device: counted, nothing to act on
        elif msg.type == "ERROR":
            self.metrics.inc("device_errors")

    def _hello_mismatch(self, spec: DeviceSpec, body: dict) -> str:
        if body["kind"] != spec.kind:
            return f"HELLO kind {body['kind']!r}, the configuration says {spec.kind!r}"
        if body["site"] != spec.site:
            return f"HELLO site {body['site']!r}, the configuration says {spec.site!r}"
        if spec.kind == "telescope" and (body.get("group") != spec.group
                                         or body.get("band") != spec.band):
            return "HELLO group/band disagree with the configuration"
        return ""

    def _welcome(self, device: str, spec: DeviceSpec, msg: P.Message,
                 out: list[LinkEvent]) -> None:
        peer = self.peers.get(device)
        welcome = {"session": self.session, "heartbeat_s": self.heartbeat_s,
                   "failsafe_s": self.failsafe_s}
        if peer is not None and peer.welcomed:
            if not peer.spoke and not peer.inflight:
                # A HELLO sent before our WELCOME reached it: a device's socket queues
                # its HELLO retries while the brain is not yet listening, and they all
                # arrive at once when it starts. Nothing was lost: welcome it again,
                # without a down and up (no flapping sitian_device_up, no dead state).
                peer.last_rx, peer.state = time.monotonic(), msg.body["state"]
                self._send(device, "WELCOME", welcome)
                return
            self._down(device, "said HELLO again (restarted)", out)  # what it did is lost
        peer = self.peers[device] = self.peers.get(device) or _Peer(spec)
        peer.welcomed, peer.spoke, peer.last_rx = True, False, time.monotonic()
        peer.state = msg.body["state"]
        self._send(device, "WELCOME", welcome)
        now = self.clock.now()
        out.append(DeviceUp(now, device, peer.state))
        self.publish(device, "EVENT", {"name": "state", "data": {**peer.state, "up": True}})

    def _mark_done(self, cmd_id: str) -> None:
        self._done[cmd_id] = None
        while len(self._done) > 100_000:
            self._done.popitem(last=False)

    def _down(self, device: str, reason: str, out: list[LinkEvent]) -> None:
        peer = self.peers[device]
        peer.welcomed = False
        now = self.clock.now()
        for cmd_id, inf in peer.inflight.items():
            self._mark_done(cmd_id)
            self.metrics.inc("commands", inf.name, "unknown")
            out.append(CommandFailed(now, device, cmd_id, "unknown",
                                     f"link lost before {inf.name} finished ({reason})"))
        peer.inflight.clear()
        out.append(DeviceDown(now, device, reason))
        self.publish(device, "EVENT", {"name": "state", "data": {"state": "dead",
                                                                 "reason": reason}})

    # Time --------------------------------------------------------------------------
    def maintain(self) -> list[LinkEvent]:
        """Heartbeats out, dead peers, ACK and deadline timeouts."""
        out: list[LinkEvent] = []
        now_m, now_w = time.monotonic(), self.clock.now()
        for device, peer in self.peers.items():
            if not peer.welcomed:
                continue
            if now_m - peer.last_rx > 3 * self.heartbeat_s:
                self._down(device, f"silent for {now_m - peer.last_rx:.1f} s", out)
                continue
            for cmd_id, inf in list(peer.inflight.items()):
                late_ack = not inf.acked and now_m - inf.sent_wall > self.ACK_TIMEOUT_S
                if late_ack or now_w > inf.deadline:
                    del peer.inflight[cmd_id]
                    self._mark_done(cmd_id)
                    why = "no ACK within 1 s" if late_ack else "deadline passed"
                    self.metrics.inc("commands", inf.name, "timeout")
                    out.append(CommandFailed(now_w, device, cmd_id, "timeout",
                                             f"{inf.name}: {why}"))
            if now_m - peer.last_tx >= self.heartbeat_s:
                self._send(device, "HEARTBEAT", {})
        return out

    def close(self) -> None:
        for device, peer in self.peers.items():
            if peer.welcomed:
                self._send(device, "BYE", {"reason": "brain stopping"})
        self.router.close(0)
        if self.pub is not None:
            self.pub.close(0)
        if self._auth is not None:
            self._auth.stop()
