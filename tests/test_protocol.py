"""SBP1 on real ZeroMQ sockets over loopback: every message type and error code, the
malformed-input fuzzing of the brain's ROUTER, dead and returning devices, idempotent
commands, the device fail-safe, and CURVE security (docs/protocol.md)."""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import protocol as P
from drivers.device import CommandError, Device, DeviceHost, Pending
from drivers.link import (
    BrainLink,
    CommandDone,
    CommandFailed,
    DeviceDown,
    DeviceEvent,
    DeviceSpec,
    DeviceUp,
    LateReply,
    SecurityError,
)

SPECS = {"xl.g01.g": DeviceSpec("telescope", "xl", 1, "g"),
         "xl.wx": DeviceSpec("weather", "xl")}


class Scope(Device):
    """A telescope whose slews take ``slew_s`` wall seconds; counts what it did."""

    kind = "telescope"
    capabilities = ("slew", "expose", "abort", "park", "open", "close", "status")

    def __init__(self, device_id="xl.g01.g", slew_s=0.3):
        super().__init__(device_id, "xl", 1, "g")
        self.slew_s = slew_s
        self.actions: list[str] = []
        self.busy_until = 0.0
        self.is_open = True

    def state(self, now):
        return {"state": "busy" if now < self.busy_until else
                "idle" if self.is_open else "closed"}

    def cmd_slew(self, args, now):
        if now < self.busy_until:
            raise CommandError("busy", "slewing")
        self.actions.append("slew")
        self.busy_until = now + self.slew_s
        end = self.busy_until

        def poll(t):
            if self.busy_until < end:
                raise CommandError("aborted", "slew cut short")
            return {"ra_deg": args["ra_deg"], "dec_deg": args["dec_deg"], "alt_deg": 60.0,
                    "az_deg": 10.0} if t >= end else None

        return Pending(end, poll)

    def cmd_expose(self, args, now):
        self.actions.append("expose")
        return {"obs_id": args["obs_id"], "t_start": now, "t_end": now + args["seconds"],
                "limiting_mag": 20.5, "seeing_arcsec": 1.0, "airmass": 1.1}

    def cmd_abort(self, args, now):
        self.actions.append("abort")
        self.busy_until = min(self.busy_until, now)
        return {}

    def cmd_park(self, args, now):
        self.actions.append("park")
        return {"state": "parked"}

    def cmd_open(self, args, now):
        self.is_open = True
        self.actions.append("open")
        return {}

    def cmd_close(self, args, now):
        self.is_open = False
        self.actions.append("close")
        return {}


class Station(Device):
    kind = "weather"
    capabilities = ("status",)

    def __init__(self):
        super().__init__("xl.wx", "xl")
        self.sent = 0

    def events(self, now):
        if self.sent == 0:
            self.sent += 1
            return [("weather", {"wind_mps": 3.0, "humidity": 0.4, "rain": False,
                                 "cloud": 0.1, "seeing_arcsec": 1.2, "dew_margin_c": 5.0})]
        return ()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def make_link(ctx, heartbeat_s=0.2, failsafe_s=60.0, **kw) -> BrainLink:
    return BrainLink(SPECS, "tcp://127.0.0.1:*", None, heartbeat_s=heartbeat_s,
                     failsafe_s=failsafe_s, context=ctx, **kw)


def pump(link, host=None, until=None, timeout_s=5.0, collect=None):
    """Run both loops until ``until(events)`` is true; returns all link events."""
    events = [] if collect is None else collect
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if host is not None:
            host.step(1)
        events += link.poll(1)
        if until is not None and until(events):
            return events
    if until is not None:
        pytest.fail(f"condition not reached in {timeout_s} s; events: {events[-10:]}")
    return events


def connected(ctx, heartbeat_s=0.2, **kw):
    link = make_link(ctx, heartbeat_s)
    scope = Scope(**kw)
    host = DeviceHost([scope], link.router_endpoint, context=ctx)
    pump(link, host, lambda ev: any(isinstance(e, DeviceUp) for e in ev))
    return link, host, scope


class Raw:
    """A hand-driven DEALER: sends any frames, reads the brain's replies."""

    def __init__(self, ctx, endpoint, identity=b"xl.g01.g"):
        self.s = ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.IDENTITY, identity)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(endpoint)

    def send(self, frames):
        self.s.send_multipart(frames)

    def msg(self, type_, body, msg_id="m1", t=0.0):
        self.send([P.MAGIC, msgpack.packb({"type": type_, "id": msg_id, "t": t,
                                           "body": body})])

    def replies(self, link, n=1, timeout_s=3.0):
        out = []
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end and len(out) < n:
            link.poll(1)
            try:
                frames = self.s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            out.append(P.decode(frames, P.FROM_BRAIN))
        return out

    def hello(self, link):
        self.msg("HELLO", {"kind": "telescope", "site": "xl", "group": 1, "band": "g",
                           "capabilities": ["status"], "protocol": 1,
                           "state": {"state": "idle"}}, "h1")
        (w,) = self.replies(link)
        assert w.type == "WELCOME"
        return w


# Framing and message validation ------------------------------------------------------
VALID = {
    "HELLO": {"kind": "weather", "site": "xl", "capabilities": ["status"], "protocol": 1,
              "state": {"state": "idle"}},
    "HEARTBEAT": {}, "ACK": {"cmd_id": "c1"}, "PROGRESS": {"cmd_id": "c1", "eta": 5.0},
    "DONE": {"cmd_id": "c1", "result": {}},
    "FAILED": {"cmd_id": "c1", "code": "busy", "message": "busy"},
    "EVENT": {"name": "fault", "data": {"code": "x", "message": "y"}},
    "ERROR": {"code": "bad_message", "message": "m", "ref": None}, "BYE": {"reason": "r"},
    "WELCOME": {"session": "s", "heartbeat_s": 1.0, "failsafe_s": 60.0},
    "COMMAND": {"cmd_id": "c1", "name": "status", "args": {}, "deadline": 1.0,
                "idempotent": True},
}


@pytest.mark.parametrize("type_", sorted(VALID))
def test_every_message_type_round_trips_through_framing(type_):
    side = P.FROM_DEVICE if type_ in P.FROM_DEVICE else P.FROM_BRAIN
    msg = P.decode(P.encode(type_, VALID[type_], 12.5, "id-1"), side)
    assert (msg.type, msg.id, msg.t, msg.body) == (type_, "id-1", 12.5, VALID[type_])


@pytest.mark.parametrize("frames,code", [
    ([b"SBP1"], "bad_frame"),
    ([b"SBP2", msgpack.packb({})], "bad_frame"),
    ([b"SBP1", b"x", b"y"], "bad_frame"),
    ([b"SBP1", b"\xc1"], "bad_message"),  # never-used msgpack byte
    ([b"SBP1", msgpack.packb([1, 2])], "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "HELLO", "id": "a", "t": 0.0})], "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "ACK", "id": 5, "t": 0.0, "body": {}})], "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "ACK", "id": "a", "t": "0", "body": {}})], "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "ACK", "id": "a", "t": 0.0, "body": {}})], "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "COMMAND", "id": "a", "t": 0.0, "body": {}})],
     "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "WELCOME", "id": "a", "t": 0.0, "body": {}})],
     "bad_message"),
    ([b"SBP1", msgpack.packb({"type": "DANCE", "id": "a", "t": 0.0, "body": {}})],
     "unknown_type"),
    ([b"SBP1", b"\x00" * (P.MAX_MESSAGE_BYTES + 1)], "too_large"),
])
def test_decode_gives_the_first_error_code_that_applies(frames, code):
    with pytest.raises(P.ProtocolError) as e:
        P.decode(frames, P.FROM_DEVICE)
    assert e.value.code == code


def test_mistyped_event_data_is_bad_message():
    bad = {"name": "weather", "data": {"wind_mps": "calm", "humidity": 0.1, "rain": False,
                                       "cloud": 0.0, "seeing_arcsec": 1.0, "dew_margin_c": 3}}
    with pytest.raises(P.ProtocolError, match="wind_mps"):
        P.decode(P.encode("EVENT", bad), P.FROM_DEVICE)
    with pytest.raises(P.ProtocolError, match="protocol 2"):
        P.decode(P.encode("HELLO", {**VALID["HELLO"], "protocol": 2}), P.FROM_DEVICE)


# The brain's ROUTER --------------------------------------------------------------------
def test_router_answers_each_malformed_message_with_one_error_and_keeps_state(ctx):
    link = make_link(ctx)
    raw = Raw(ctx, link.router_endpoint)
    cases = [([b"nope"], "bad_frame", None),
             ([b"SBP1", msgpack.packb({"type": "ACK", "id": "q7", "t": 0.0})], "bad_message",
              "q7"),
             ([b"SBP1", msgpack.packb({"type": "WAVE", "id": "q8", "t": 0.0, "body": {}})],
              "unknown_type", "q8"),
             ([b"SBP1", b"\x00" * (P.MAX_MESSAGE_BYTES + 10)], "too_large", None)]
    for frames, code, ref in cases:
        raw.send(frames)
        (err,) = raw.replies(link)
        assert (err.type, err.body["code"], err.body.get("ref")) == ("ERROR", code, ref)
    raw.msg("HEARTBEAT", {}, "q9")  # before HELLO
    (err,) = raw.replies(link)
    assert (err.body["code"], err.body["ref"]) == ("not_welcomed", "q9")
    assert link.peers == {}
    assert link.metrics.counts[("errors", "bad_frame")] == 1
    assert link.metrics.counts[("errors", "not_welcomed")] == 1
    link.close()


def test_unknown_device_and_mismatched_hello_are_refused(ctx):
    link = make_link(ctx)
    stranger = Raw(ctx, link.router_endpoint, b"zz.g09.q")
    stranger.msg("HELLO", VALID["HELLO"], "h9")
    (err,) = stranger.replies(link)
    assert (err.body["code"], err.body["ref"]) == ("unknown_device", "h9")
    liar = Raw(ctx, link.router_endpoint, b"xl.g01.g")
    liar.msg("HELLO", {**VALID["HELLO"], "kind": "weather"}, "h10")
    (err,) = liar.replies(link)
    assert err.body["code"] == "bad_message" and "configuration" in err.body["message"]
    assert link.up_devices() == []
    link.close()


def test_a_message_stamped_ahead_of_the_brains_world_clock_is_refused(ctx):
    """World time is the brain's: a device's message stamped a month ahead is refused
    with one ERROR (bad_message, naming the skew), counted per device, and never reaches
    the brain; a few seconds of skew (within the tolerance) are accepted."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    link = make_link(ctx, heartbeat_s=5.0, registry=registry)
    raw = Raw(ctx, link.router_endpoint, b"xl.wx")
    raw.msg("HELLO", {**VALID["HELLO"], "kind": "weather"}, "h1",
            t=time.time() + 30 * 86400.0)  # HELLO: the WELCOME tells it the brain's time
    (w,) = raw.replies(link)
    assert w.type == "WELCOME" and abs(w.t - time.time()) < 5
    report = {"name": "weather", "data": {"wind_mps": 3.0, "humidity": 0.4, "rain": False,
                                          "cloud": 0.1, "seeing_arcsec": 1.2,
                                          "dew_margin_c": 5.0}}
    raw.msg("EVENT", report, "m1", t=time.time() + 30 * 86400.0)
    (err,) = raw.replies(link)
    assert (err.type, err.body["code"], err.body["ref"]) == ("ERROR", "bad_message", "m1")
    assert "ahead of the brain's world clock" in err.body["message"]
    raw.msg("EVENT", report, "m2", t=time.time() + 2.0)
    events = pump(link, until=lambda ev: any(isinstance(e, DeviceEvent) for e in ev))
    (ev,) = [e for e in events if isinstance(e, DeviceEvent)]
    assert ev.data["wind_mps"] == 3.0 and ev.t < time.time() + 5
    fams = {f.name: f for f in text_string_to_metric_families(
        generate_latest(registry).decode())}
    ahead = {s.labels["device"]: s.value for s in fams["sitian_protocol_future_stamped"].samples
             if s.name.endswith("_total")}
    assert ahead == {"xl.g01.g": 0, "xl.wx": 1}
    errors = {s.labels["code"]: s.value for s in fams["sitian_protocol_errors"].samples
              if s.name.endswith("_total")}
    assert errors["bad_message"] == 1
    link.close()


frame_bytes = st.one_of(st.binary(max_size=64), st.just(P.MAGIC),
                        st.builds(lambda d: msgpack.packb(d), st.dictionaries(
                            st.sampled_from(["type", "id", "t", "body", "x"]),
                            st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(),
                                      st.text(max_size=8), st.sampled_from(sorted(P.TYPES)),
                                      st.dictionaries(st.text(max_size=5),
                                                      st.integers(-2**31, 2**31),
                                                      max_size=3)), max_size=5)))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(frame_bytes, min_size=1, max_size=4))
def test_fuzzed_frames_never_crash_or_change_a_welcomed_device(ctx_fuzz, frames):
    link, raw = ctx_fuzz
    before = dict(link.peers["xl.g01.g"].inflight), link.up_devices()
    raw.send(frames)
    replies = []
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end and not replies:
        events = link.poll(1)
        assert not any(isinstance(e, DeviceDown | CommandDone) for e in events)
        try:
            replies.append(raw.s.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            pass
    # Whatever it was, the peer is unchanged; a malformed message gets exactly one ERROR.
    assert (dict(link.peers["xl.g01.g"].inflight), link.up_devices()) == before
    try:
        msg = P.decode(frames, P.FROM_DEVICE)
    except P.ProtocolError as e:
        assert len(replies) == 1
        err = P.decode(replies[0], P.FROM_BRAIN)
        assert (err.type, err.body["code"]) == ("ERROR", e.code)
    else:
        assert msg.type != "HELLO" or replies  # a valid HELLO is welcomed again


@pytest.fixture(scope="module")
def ctx_fuzz():
    c = zmq.Context()
    link = BrainLink(SPECS, "tcp://127.0.0.1:*", None, heartbeat_s=30.0, context=c)
    raw = Raw(c, link.router_endpoint)
    raw.hello(link)
    yield link, raw
    link.close()
    c.destroy(linger=0)


# Commands -------------------------------------------------------------------------------
def test_command_lifecycle_ack_progress_done_and_device_errors(ctx):
    link, host, _scope = connected(ctx, slew_s=3.0)
    now = time.time()
    # The deadline is shorter than the slew: the device sends PROGRESS and it is kept.
    assert link.send_command("xl.g01.g", "s1", "slew", {"ra_deg": 10.0, "dec_deg": 20.0},
                             now + 2.0, False) is None
    ev = pump(link, host, lambda ev: any(isinstance(e, CommandDone | CommandFailed)
                                         for e in ev))
    done = [e for e in ev if isinstance(e, CommandDone | CommandFailed)]
    assert isinstance(done[0], CommandDone), done
    assert done[0].result["ra_deg"] == 10.0 and done[0].cmd_id == "s1"
    for cmd_id, name, args, code in [("u1", "dance", {}, "unknown_command"),
                                     ("b1", "slew", {"ra_deg": 400.0, "dec_deg": 0.0},
                                      "bad_args"),
                                     ("b2", "expose", {"seconds": 30.0}, "bad_args")]:
        link.send_command("xl.g01.g", cmd_id, name, args, time.time() + 5, False)
        ev = pump(link, host, lambda ev, c=cmd_id: any(getattr(e, "cmd_id", "") == c
                                                       for e in ev))
        (f,) = [e for e in ev if getattr(e, "cmd_id", "") == cmd_id]
        assert isinstance(f, CommandFailed) and f.code == code
    # busy, then aborted by abort
    link.send_command("xl.g01.g", "s2", "slew", {"ra_deg": 1.0, "dec_deg": 1.0},
                      time.time() + 5, False)
    link.send_command("xl.g01.g", "s3", "slew", {"ra_deg": 2.0, "dec_deg": 2.0},
                      time.time() + 5, False)
    ev = pump(link, host, lambda ev: any(getattr(e, "cmd_id", "") == "s3" for e in ev))
    assert [e.code for e in ev if getattr(e, "cmd_id", "") == "s3"] == ["busy"]
    link.send_command("xl.g01.g", "a1", "abort", {}, time.time() + 5, True)
    ev = pump(link, host, lambda ev: {"s2", "a1"} <= {getattr(e, "cmd_id", "") for e in ev})
    codes = {e.cmd_id: getattr(e, "code", "done") for e in ev if hasattr(e, "cmd_id")}
    assert codes["s2"] == "aborted" and codes["a1"] == "done"
    link.close()
    host.close()


def test_device_sent_command_and_welcome_are_bad_message(ctx):
    link = make_link(ctx)
    raw = Raw(ctx, link.router_endpoint)
    raw.hello(link)
    raw.msg("COMMAND", VALID["COMMAND"], "x1")
    (err,) = raw.replies(link)
    assert (err.body["code"], err.body["ref"]) == ("bad_message", "x1")
    link.close()


def test_a_repeated_cmd_id_gets_the_same_outcome_and_is_not_acted_on_twice(ctx):
    link, host, scope = connected(ctx)
    raw_cmd = {"cmd_id": "e1", "name": "expose", "args": {"seconds": 1.0, "obs_id": "o1",
                                                          "field_id": 3},
               "deadline": time.time() + 60, "idempotent": False}
    link.send_command("xl.g01.g", "e1", "expose", raw_cmd["args"], raw_cmd["deadline"], False)
    pump(link, host, lambda ev: any(isinstance(e, CommandDone) for e in ev))
    # The brain resends the very same COMMAND (as after a lost link): the device answers
    # with the stored outcome; the brain counts the late DONE and delivers nothing.
    link._send("xl.g01.g", "COMMAND", raw_cmd)
    ev = pump(link, host, timeout_s=0.5)
    assert scope.actions.count("expose") == 1
    assert not any(isinstance(e, CommandDone) for e in ev)
    assert link.metrics.counts[("late",)] == 1
    (late,) = [e for e in ev if isinstance(e, LateReply)]  # for the journal to reconcile
    assert late.ok and late.body["result"]["obs_id"] == "o1"
    link.close()
    host.close()


def test_missing_ack_times_out_and_a_dead_device_cancels_in_flight_as_unknown(ctx):
    link, host, _scope = connected(ctx, heartbeat_s=0.2)
    # The device process stops answering (its loop is no longer run).
    link.send_command("xl.g01.g", "e2", "expose", {"seconds": 1.0, "obs_id": "o2",
                                                   "field_id": 1}, time.time() + 60, False)
    t0 = time.monotonic()
    ev = pump(link, None, lambda ev: any(isinstance(e, DeviceDown) for e in ev), timeout_s=5)
    took = time.monotonic() - t0
    failed = [e for e in ev if isinstance(e, CommandFailed)]
    assert [f.code for f in failed] in (["timeout"], ["unknown"])
    assert took <= 3 * 0.2 + 1.0  # dead within 3 heartbeat intervals + 1 s
    assert "xl.g01.g" not in link.up_devices()
    # It comes back: a HELLO welcomes it again and it is up.
    ev = pump(link, host, lambda ev: any(isinstance(e, DeviceUp) for e in ev), timeout_s=10)
    assert link.up_devices() == ["xl.g01.g"]
    link.close()
    host.close()


def test_hellos_queued_while_the_brain_starts_welcome_once_and_a_restart_is_down_up(ctx):
    # The brain binds its socket, then takes seconds to load its models before its loop
    # runs: a device's HELLO retries (0, 0.5, 1.5 s) wait in the socket meanwhile.
    link = make_link(ctx, heartbeat_s=0.2)
    host = DeviceHost([Scope()], link.router_endpoint, context=ctx)
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        host.step(20)
    ev = pump(link, host, lambda ev: any(isinstance(e, DeviceUp) for e in ev))
    ev = pump(link, host, timeout_s=1.0, collect=ev)  # heartbeats flow
    assert [type(e).__name__ for e in ev if isinstance(e, DeviceUp | DeviceDown)] == \
        ["DeviceUp"]  # one welcome: no down/up flapping for queued HELLOs
    assert link.up_devices() == ["xl.g01.g"] and host.links["xl.g01.g"].welcomed
    # A device that has spoken since its WELCOME and says HELLO again restarted: what
    # it was doing is lost, so the brain hears a down, then an up.
    hl = host.links["xl.g01.g"]
    hl.welcomed, hl.next_hello = False, 0.0
    ev = pump(link, host, lambda ev: any(isinstance(e, DeviceUp) for e in ev))
    assert [type(e).__name__ for e in ev if isinstance(e, DeviceUp | DeviceDown)] == \
        ["DeviceDown", "DeviceUp"]
    link.close()
    host.close()


def test_idempotent_command_is_resendable_and_status_reports_state(ctx):
    link, host, _scope = connected(ctx)
    for k in range(2):
        link.send_command("xl.g01.g", f"st{k}", "status", {}, time.time() + 5, True)
    ev = pump(link, host, lambda ev: sum(isinstance(e, CommandDone) for e in ev) == 2)
    assert all(e.result["state"] in ("idle", "closed") for e in ev if isinstance(e, CommandDone))
    fail = link.send_command("xl.wx", "w1", "status", {}, time.time() + 5, True)
    assert fail is not None and fail.code == "device_fault"  # not connected
    link.close()
    host.close()


def test_events_reach_the_brain_and_the_pub_feed(ctx):
    link = BrainLink(SPECS, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", heartbeat_s=0.2,
                     context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"xl.wx")
    sub.connect(link.pub_endpoint)
    time.sleep(0.2)  # the slow-joiner: let the subscription reach the PUB
    host = DeviceHost([Station()], link.router_endpoint, context=ctx)
    ev = pump(link, host, lambda ev: any(isinstance(e, DeviceEvent) for e in ev))
    (wx,) = [e for e in ev if isinstance(e, DeviceEvent)]
    assert wx.name == "weather" and wx.data["humidity"] == 0.4
    topics = []
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end and len(topics) < 2:
        try:
            topic, payload = sub.recv_multipart(zmq.NOBLOCK)
            topics.append((topic, msgpack.unpackb(payload)["body"]["name"]))
        except zmq.Again:
            link.poll(1)
            host.step(1)
    assert (b"xl.wx", "weather") in topics and (b"xl.wx", "state") in topics
    link.close()
    host.close()


# Fail-safe and security ------------------------------------------------------------------
def test_device_fails_safe_when_the_brain_goes_silent_and_reports_fault(ctx):
    link = make_link(ctx, heartbeat_s=0.1, failsafe_s=0.6)
    scope = Scope()
    host = DeviceHost([scope], link.router_endpoint, context=ctx)
    pump(link, host, lambda ev: any(isinstance(e, DeviceUp) for e in ev))
    # ... and until the WELCOME has arrived: a device never welcomed has no brain to miss.
    pump(link, host, lambda _ev: all(lk.welcomed for lk in host.links.values()))
    endpoint = link.router_endpoint
    link.close()  # the brain is killed
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end and "close" not in scope.actions:
        host.step(5)
    assert scope.actions[-3:] == ["abort", "park", "close"]
    assert not scope.is_open
    # A new brain on the same address: the device says HELLO, then reports the fault.
    link2 = BrainLink(SPECS, endpoint, None, heartbeat_s=0.1, failsafe_s=0.6, context=ctx)
    ev = pump(link2, host, lambda ev: any(isinstance(e, DeviceEvent) for e in ev),
              timeout_s=10)
    (fault,) = [e for e in ev if isinstance(e, DeviceEvent)]
    assert fault.name == "fault" and fault.data["code"] == "failsafe"
    link2.close()
    host.close()


def test_curve_unknown_key_never_completes_the_handshake(ctx, tmp_path):
    import zmq.auth

    from drivers.keys import create_keys

    create_keys(tmp_path / "keys")
    server_pub, _ = zmq.auth.load_certificate(tmp_path / "keys" / "brain.key")
    good = zmq.auth.load_certificate(tmp_path / "keys" / "devices.key_secret")
    zmq.auth.create_certificates(tmp_path, "stranger")
    bad = zmq.auth.load_certificate(tmp_path / "stranger.key_secret")
    link = BrainLink(SPECS, "tcp://127.0.0.1:*", None, heartbeat_s=0.2, security="curve",
                     keys_dir=tmp_path / "keys", context=ctx)
    intruder = DeviceHost([Scope()], link.router_endpoint, context=ctx,
                          curve=(server_pub, *bad))
    pump(link, intruder, timeout_s=1.5)
    assert link.up_devices() == [] and link.metrics.counts == {}
    intruder.close()
    friend = DeviceHost([Scope()], link.router_endpoint, context=ctx,
                        curve=(server_pub, *good))
    pump(link, friend, lambda ev: any(isinstance(e, DeviceUp) for e in ev))
    assert link.up_devices() == ["xl.g01.g"]
    link.close()
    friend.close()


def test_curve_key_bound_to_other_devices_is_unauthorised(ctx, tmp_path):
    """A CURVE key bound with --devices to another site's devices completes the
    handshake but may not say HELLO as this telescope: ERROR unauthorised, counted, the
    device stays down; the key bound to it is welcomed."""
    import zmq.auth

    from drivers.keys import create_keys

    keys = tmp_path / "keys"
    create_keys(keys, "mz", devices="mz.*")
    create_keys(keys, "xl", devices="xl.g01.*,xl.wx")
    server_pub, _ = zmq.auth.load_certificate(keys / "brain.key")
    link = BrainLink(SPECS, "tcp://127.0.0.1:*", None, heartbeat_s=0.2, security="curve",
                     keys_dir=keys, context=ctx)
    wrong = DeviceHost([Scope()], link.router_endpoint, context=ctx,
                       curve=(server_pub, *zmq.auth.load_certificate(keys / "mz.key_secret")))
    errors = []
    orig = wrong._receive

    def spy(link_, frames):
        msg = P.decode(frames, P.FROM_BRAIN)
        if msg.type == "ERROR":
            errors.append(msg.body["code"])
        orig(link_, frames)

    wrong._receive = spy
    pump(link, wrong, lambda _ev: "unauthorised" in errors, timeout_s=3)
    assert "unauthorised" in errors
    assert link.up_devices() == [] and link.metrics.counts.get(("errors", "unauthorised"), 0) >= 1
    wrong.close()
    right = DeviceHost([Scope()], link.router_endpoint, context=ctx,
                       curve=(server_pub, *zmq.auth.load_certificate(keys / "xl.key_secret")))
    pump(link, right, lambda ev: any(isinstance(e, DeviceUp) for e in ev))
    assert link.up_devices() == ["xl.g01.g"]
    link.close()
    right.close()


def test_security_none_is_refused_off_loopback(ctx):
    with pytest.raises(SecurityError, match="non-loopback"):
        BrainLink(SPECS, "tcp://0.0.0.0:*", None, context=ctx)
    with pytest.raises(SecurityError, match="keys"):
        BrainLink(SPECS, "tcp://0.0.0.0:*", None, security="curve", context=ctx)
