"""SBP1 link costs: command round trip on loopback, and heartbeats from a full array.

Two JSON lines. The devices run in another process (multiprocessing, ``spawn``: the
child builds its own ZeroMQ context and never shares the brain's GIL); the brain's side
runs here, in the main thread, as the daemon runs it.

* ``protocol_round_trip``: the brain sends ``status`` to one device and polls until its
  ``DONE`` arrives (COMMAND -> ACK + DONE), 5000 times in sequence after 500 warm-up
  round trips. Baseline in the same run, between the same two processes' roles: a plain
  ZeroMQ REQ/REP exchange of JSON bodies of the same shape. Target: SBP1 p99 <= 1 ms.
* ``protocol_heartbeats``: 60 devices heartbeating at 1 Hz; the brain runs
  ``link.poll(20)`` for 20 s of wall time and its CPU time (every thread of the process,
  ZeroMQ's I/O thread included) is reported as a percentage of one core. Baseline: the
  same loop for the same time with no device connected. Target: <= 5 % of one core; all
  60 must be up at the end and none declared dead.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import numpy as np
import zmq

from drivers.device import Device, DeviceHost
from drivers.link import BrainLink, CommandDone, CommandFailed, DeviceDown, DeviceSpec

N, WARMUP = 5000, 500
HB_DEVICES, HB_WALL_S = 60, 20.0
SITE = "xl"
TARGET_P99_MS, TARGET_CPU_PERCENT = 1.0, 5.0


class StatusTelescope(Device):
    """The smallest device: answers ``status`` at once."""

    kind = "telescope"
    capabilities = ("status",)


def device_ids(n: int) -> list[tuple[str, int, str]]:
    """``n`` telescope ids, three bands per group: xl.g01.g, xl.g01.r, xl.g01.i, ..."""
    out = []
    for k in range(n):
        group, band = k // 3 + 1, "gri"[k % 3]
        out.append((f"{SITE}.g{group:02d}.{band}", group, band))
    return out


def specs(n: int) -> dict[str, DeviceSpec]:
    return {d: DeviceSpec("telescope", SITE, g, b) for d, g, b in device_ids(n)}


# The device process -----------------------------------------------------------------
def host_devices(endpoint: str, n: int, step_ms: int, stop, cpu_out) -> None:
    """Host ``n`` devices until ``stop`` is set; report this process's CPU seconds."""
    ctx = zmq.Context()
    host = DeviceHost([StatusTelescope(d, SITE, g, b) for d, g, b in device_ids(n)],
                      endpoint, context=ctx)
    c0, w0 = time.process_time(), time.perf_counter()
    while not stop.is_set():
        host.step(step_ms)
    cpu_out.put((time.process_time() - c0, time.perf_counter() - w0))
    host.close()
    ctx.term()


def rep_server(endpoint: str) -> None:
    """The baseline's device side: REP, JSON in, JSON out, until told to stop."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.REP)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    while True:
        req = json.loads(s.recv())
        if req.get("stop"):
            s.send(b"{}")
            break
        body = req["body"]
        reply = {"type": "DONE", "id": f"r-{req['id']}", "t": time.time(),
                 "body": {"cmd_id": body["cmd_id"], "result": {"state": "idle"}}}
        s.send(json.dumps(reply).encode())
    s.close(0)
    ctx.term()


# The brain's side -------------------------------------------------------------------
def _wait_up(link: BrainLink, n: int, timeout_s: float = 20.0) -> list:
    events: list = []
    t_end = time.monotonic() + timeout_s
    while len(link.up_devices()) < n:
        if time.monotonic() > t_end:
            raise RuntimeError(f"only {len(link.up_devices())} of {n} devices came up")
        events += link.poll(20)
    return events


def _pcts(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "max": float(a.max())}


def sbp1_round_trips(mpc, n: int, warmup: int) -> dict:
    link = BrainLink(specs(1), router="tcp://127.0.0.1:*", pub=None, heartbeat_s=1.0,
                     context=zmq.Context())
    stop, cpu_q = mpc.Event(), mpc.Queue()
    proc = mpc.Process(target=host_devices, args=(link.router_endpoint, 1, 5, stop, cpu_q))
    proc.start()
    try:
        _wait_up(link, 1)
        device = link.up_devices()[0]
        ms, polls = [], 0
        for i in range(warmup + n):
            cmd_id = f"rt-{i}"
            t0 = time.perf_counter()
            failed = link.send_command(device, cmd_id, "status", {}, time.time() + 60, True)
            if failed is not None:
                raise RuntimeError(f"send failed: {failed}")
            done = False
            while not done:
                polls += i >= warmup
                for ev in link.poll(1):
                    if isinstance(ev, CommandDone) and ev.cmd_id == cmd_id:
                        done = True
                    elif isinstance(ev, CommandFailed | DeviceDown):
                        raise RuntimeError(f"round trip {i}: {ev}")
            if i >= warmup:
                ms.append((time.perf_counter() - t0) * 1e3)
        out = _pcts(ms)
        out["polls_per_round_trip"] = polls / n
        return out
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
        link.close()
        link.ctx.term()


def reqrep_round_trips(mpc, n: int, warmup: int) -> dict:
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.bind("tcp://127.0.0.1:*")
    endpoint = req.getsockopt(zmq.LAST_ENDPOINT).decode()
    proc = mpc.Process(target=rep_server, args=(endpoint,))
    proc.start()
    try:
        ms = []
        for i in range(warmup + n):
            body = {"cmd_id": f"rt-{i}", "name": "status", "args": {},
                    "deadline": time.time() + 60, "idempotent": True}
            t0 = time.perf_counter()
            req.send(json.dumps({"type": "COMMAND", "id": str(i), "t": time.time(),
                                 "body": body}).encode())
            reply = json.loads(req.recv())
            if reply["body"]["cmd_id"] != body["cmd_id"]:
                raise RuntimeError("REQ/REP reply out of order")
            if i >= warmup:
                ms.append((time.perf_counter() - t0) * 1e3)
        req.send(json.dumps({"stop": True}).encode())
        req.recv()
        return _pcts(ms)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
        req.close(0)
        ctx.term()


def poll_loop_cpu(link: BrainLink, wall_s: float) -> tuple[float, list]:
    """CPU percent of one core of ``link.poll(20)`` in a loop for ``wall_s``."""
    events: list = []
    c0, w0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - w0 < wall_s:
        events += link.poll(20)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return 100.0 * cpu / wall, events


def heartbeats(mpc) -> dict:
    link = BrainLink(specs(HB_DEVICES), router="tcp://127.0.0.1:*", pub=None,
                     heartbeat_s=1.0, context=zmq.Context())
    try:
        # Baseline: the same loop, the same configuration, nobody connected.
        idle_pct, _ = poll_loop_cpu(link, HB_WALL_S)
        stop, cpu_q = mpc.Event(), mpc.Queue()
        proc = mpc.Process(target=host_devices,
                           args=(link.router_endpoint, HB_DEVICES, 20, stop, cpu_q))
        proc.start()
        try:
            early = _wait_up(link, HB_DEVICES)
            pct, events = poll_loop_cpu(link, HB_WALL_S)
            up = len(link.up_devices())
            stop.set()
            host_cpu, host_wall = cpu_q.get(timeout=10)
        finally:
            stop.set()
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
        downs = [e for e in early + events if isinstance(e, DeviceDown)]
        return {"brain_cpu_percent": round(pct, 2), "idle_cpu_percent": round(idle_pct, 2),
                "host_cpu_percent": round(100.0 * host_cpu / host_wall, 2),
                "up_at_end": up, "devices_down": len(downs)}
    finally:
        link.close()
        link.ctx.term()


def main() -> None:
    mpc = mp.get_context("spawn")  # the child builds its own zmq context, nothing inherited
    t_all = time.perf_counter()
    sb = sbp1_round_trips(mpc, N, WARMUP)
    rr = reqrep_round_trips(mpc, N, WARMUP)
    print(json.dumps({
        "bench": "protocol_round_trip", "n": N, "warmup": WARMUP,
        "sbp1_p50_ms": round(sb["p50"], 4), "sbp1_p99_ms": round(sb["p99"], 4),
        "sbp1_mean_ms": round(sb["mean"], 4), "sbp1_max_ms": round(sb["max"], 3),
        "sbp1_polls_per_round_trip": round(sb["polls_per_round_trip"], 2),
        "reqrep_p50_ms": round(rr["p50"], 4), "reqrep_p99_ms": round(rr["p99"], 4),
        "reqrep_mean_ms": round(rr["mean"], 4), "reqrep_max_ms": round(rr["max"], 3),
        "ratio_p99": round(sb["p99"] / rr["p99"], 3),
        "target_p99_ms": TARGET_P99_MS, "meets_target": sb["p99"] <= TARGET_P99_MS}),
        flush=True)
    hb = heartbeats(mpc)
    print(json.dumps({
        "bench": "protocol_heartbeats", "devices": HB_DEVICES, "wall_s": HB_WALL_S, **hb,
        "target_percent": TARGET_CPU_PERCENT,
        "meets_target": (hb["brain_cpu_percent"] <= TARGET_CPU_PERCENT
                         and hb["up_at_end"] == HB_DEVICES and hb["devices_down"] == 0),
        "total_wall_s": round(time.perf_counter() - t_all, 1)}), flush=True)


if __name__ == "__main__":
    main()
