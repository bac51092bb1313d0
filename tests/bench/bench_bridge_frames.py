"""The hardware bridges' ``--photometry``: from a finished exposure to its ``detections``.

One JSON object per bridge, then a summary line. Each bridge runs as it is deployed: its
DeviceHost, device and photometry worker in a process of their own (``spawn``), talking
SBP1 to a real BrainLink here (the brain's side), against its real device server:

* ``indi``: ``indiserver`` with ``indi_simulator_telescope`` and ``indi_simulator_ccd``
  in its directory mode, serving a frame rendered here (``simulator/frames.py``, 1"/pixel,
  RA and Dec growing with the pixel index, 2,400 stars per 2048², 13th mag to 1.5 mag
  past the 5-sigma limit of 20); the camera writes its own WCS (``WCS_CONTROL``); the
  frame comes as a ``.fits`` BLOB of ``CCD1`` (tests/test_indi_frames.py).
* ``alpaca``: the ``alpaca-simulators`` server (tests/alpaca_rig.py), its camera drawing a
  local catalogue (a jittered grid of G 13-17.5 stars, 0.258"/pixel); the bridge
  downloads ``imagebytes`` and makes the header from the mount's pointing
  (tests/test_alpaca_frames.py).

Both measure with the calibration stars of their field (``--reference``), no field
history. Per frame size (2048² and 1024²; INDI's 1024² frame is the 2048² one's centre,
Alpaca's a second server with a 1024² sensor), ``EXPOSURES`` exposures of 1 s, one after
the other:

* ``latency_s``: from the ``expose`` DONE arriving here to the exposure's last
  ``detections`` part arriving here (median, max). ``expose_cmd_s``: COMMAND to DONE.
* The transfer alone. INDI: ``blob_transfer_s``, from the ``setBLOBVector``'s start tag
  seen by the client's reader thread (its first 256 KiB read) to the frame decoded
  (XML parse and base64 included), and ``blob_decoded_after_done_s`` (negative: the frame
  was in before the camera said the exposure was done). Alpaca: ``download_s`` (the
  HTTP ``imagearray`` request), ``convert_s`` (decode, FITS order, header) and
  ``download_started_after_done_s``.
* ``loop_submit_s`` (INDI): the protocol thread's own share, pairing, ``read_fits`` of
  the BLOB, the header and the hand-over to the worker.
* ``pipeline_worker_s``: the worker's time for the frame (FrameReducer ``stats["cpu_s"]``,
  wall time inside the worker) and ``pipeline_worker_cpu_s`` (the worker process's CPU
  time meanwhile, /proc, 10 ms ticks: less than the wall time when it waits for a core);
  ``handoff_s``: submit to the event taken, less that
  (pickling to the worker and back, the loop's polling); ``event_to_brain_s``: the event
  taken by the bridge's loop to its arrival here.
* Is the bridge answering? ``loop_gap_max_s``: the longest interval between two turns
  of the bridge's DeviceHost loop (turns normally start every 20 ms or less) from each
  ``expose`` sent until its detections, split into the gaps that overlap the frame's
  transfer (INDI: the BLOB's start tag to its decoding; Alpaca: the download thread's
  work) and the others; ``status_rtt_s``: ``status`` commands sent every 100 ms from each
  ``expose`` until its detections, their round trip (median, p99, max).
* Baseline in the same run: ``baseline_reduce_s``, ``drivers.framephot.reduce_frame`` on
  the same frame (the last one the bridge measured, as it was handed to the worker),
  in this process, the median of 3 runs (and its CPU time). ``bridge_adds_s``: the
  median latency less that.

Everything shares the machine (2 cores on the development machine; ``load_avg`` is
reported): the bridge, its worker, the device server, the brain's loop here. About 100 s
(INDI's first slew is 15 s of it).

    .venv/bin/python tests/bench/bench_bridge_frames.py [--exposures 4] [--sizes 2048,1024]
        [--bridges indi,alpaca]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from astropy.io import fits  # noqa: E402

from drivers.framephot import FrameMeta, StarCatalogue, reduce_frame  # noqa: E402
from drivers.link import (  # noqa: E402
    BrainLink,
    CommandDone,
    CommandFailed,
    DeviceEvent,
    DeviceSpec,
)

DEVICE = "xl.g01.g"
SITE_LAT, SITE_LON, SITE_ELEV = 40.3933, 117.575, 900.0  # Xinglong
EXPOSURES = 4
EXPOSE_S = 1.0
PING_S = 0.1  # a status command this often while a frame is on its way
BASELINE_RUNS = 3
# INDI (tests/test_indi_frames.py)
CCD, MOUNT = "CCD Simulator", "Telescope Simulator"
SIMULATORS = ("indi_simulator_telescope", "indi_simulator_ccd")
PIXEL_UM, FOCAL_MM = 5.0, 1031.324  # 1.000 arcsec per pixel
INDI_DEC = 80.0
STARS_PER_MPX = 600  # 600 per 1024², as the test's frame
# Alpaca (tests/test_alpaca_frames.py)
ALPACA_SCALE = 206264.806 * 10e-6 / 8.0  # 10 um pixels, 8 m focal length
GRID_PITCH_PX = 80.0


def _stats(xs, digits: int = 3) -> dict:
    xs = [float(x) for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(xs), digits), "max": round(max(xs), digits)}


# The brain's side --------------------------------------------------------------------
class Brain:
    """A real BrainLink (the brain's ROUTER); every message timed as it arrives here."""

    def __init__(self):
        self.link = BrainLink({DEVICE: DeviceSpec("telescope", "xl", 1, "g")},
                              router="tcp://127.0.0.1:*", pub=None, heartbeat_s=1.0)
        self.endpoint = self.link.router_endpoint
        self.n = 0
        self.outcomes: dict[str, tuple[float, object]] = {}
        self.events: list[tuple[float, DeviceEvent]] = []
        self.pings: dict[str, float] = {}  # cmd_id -> sent (monotonic)
        self.rtts: list[tuple[float, float]] = []  # (sent, round trip)
        self.ping_failed = 0

    def close(self) -> None:
        self.link.close()

    def pump(self, timeout_ms: int = 10) -> None:
        got = self.link.poll(timeout_ms)
        t = time.monotonic()
        for e in got:
            if isinstance(e, CommandDone | CommandFailed):
                sent = self.pings.pop(e.cmd_id, None)
                if sent is None:
                    self.outcomes[e.cmd_id] = (t, e)
                elif isinstance(e, CommandDone):
                    self.rtts.append((sent, t - sent))
                else:
                    self.ping_failed += 1
            elif isinstance(e, DeviceEvent):
                self.events.append((t, e))

    def wait(self, cond, timeout_s: float, what: str) -> None:
        t_end = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > t_end:
                raise SystemExit(json.dumps({"bench": "bridge_frames",
                                             "error": f"timed out waiting for {what}"}))
            self.pump(20)

    def send(self, name: str, args: dict | None = None, timeout_s: float = 120.0) -> str:
        self.n += 1
        cmd_id = f"bench-{self.n}"
        failed = self.link.send_command(DEVICE, cmd_id, name, args or {},
                                        time.time() + timeout_s + 30.0,
                                        idempotent=name in ("open", "status"))
        if failed is not None:
            raise SystemExit(json.dumps({"bench": "bridge_frames",
                                         "error": f"{name} not sent: {failed}"}))
        return cmd_id

    def done(self, name: str, args: dict | None = None, timeout_s: float = 120.0) -> dict:
        cmd_id = self.send(name, args, timeout_s)
        self.wait(lambda: cmd_id in self.outcomes, timeout_s, f"{name} to finish")
        _t, ev = self.outcomes.pop(cmd_id)
        if not isinstance(ev, CommandDone):
            raise SystemExit(json.dumps({"bench": "bridge_frames",
                                         "error": f"{name} {args} failed: {ev}"}))
        return ev.result

    def ping(self) -> None:
        self.pings[self.send("status", timeout_s=30.0)] = time.monotonic()

    def expose(self, obs_id: str, timeout_s: float = 90.0) -> dict:
        """One exposure, status pings every PING_S until its detections are all here."""
        t_send = time.monotonic()
        cmd_id = self.send("expose", {"seconds": EXPOSE_S, "obs_id": obs_id, "field_id": 7})
        next_ping, t_end = t_send, t_send + timeout_s
        out: dict = {"obs_id": obs_id, "t_send": t_send}
        while True:
            now = time.monotonic()
            if now > t_end:
                raise SystemExit(json.dumps({"bench": "bridge_frames", "error":
                                             f"no detections for {obs_id} in {timeout_s} s",
                                             "got": {k: v for k, v in out.items()}}))
            if now >= next_ping:
                self.ping()
                next_ping += PING_S
            self.pump(max(1, min(10, int((next_ping - time.monotonic()) * 1e3))))
            if "t_done" not in out and cmd_id in self.outcomes:
                t, ev = self.outcomes.pop(cmd_id)
                if not isinstance(ev, CommandDone):
                    raise SystemExit(json.dumps({"bench": "bridge_frames",
                                                 "error": f"expose {obs_id} failed: {ev}"}))
                out["t_done"] = t
            parts = [(t, e.data) for t, e in self.events if e.name == "detections"
                     and e.data.get("obs_id") == obs_id]
            if parts and len(parts) == parts[0][1]["parts"] and "t_done" in out:
                out["t_det"] = max(t for t, _d in parts)
                out["sources"] = sum(len(d["sources"]) for _t, d in parts)
                out["parts"] = len(parts)
                break
        self.wait(lambda: not self.pings, 10.0, "the last status answers")
        out["t_end"] = time.monotonic()
        return out


# The bridge's side (a spawned process) -------------------------------------------------
class _Recorder:
    def __init__(self):
        self.turns: list[float] = []
        self.blob_start: list[float] = []
        self.blobs: list[dict] = []
        self.submits: dict[str, dict] = {}
        self.downloads: dict[str, dict] = {}
        self.taken: dict[str, dict] = {}
        self.last_frame: dict[int, tuple] = {}  # side -> (data, header)


def _proc_cpu_s(pid: int) -> float:
    """A process's user + system CPU time (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


def _instrument_reducer(reducer, rec: _Recorder) -> None:
    submit, events = reducer.submit, reducer.events

    def spy_submit(meta, data, header):
        t = time.monotonic()
        cpu = _proc_cpu_s(reducer.worker_pid())
        ok = submit(meta, data, header)
        rec.submits.setdefault(meta.obs_id, {}).update(
            {"t": t, "shape": list(np.shape(data)), "ok": ok, "worker_cpu0": cpu})
        rec.last_frame[int(np.shape(data)[0])] = (data, header)
        return ok

    def timed_events():
        cpu0 = reducer.stats["cpu_s"]
        out = events()
        if out:
            t = time.monotonic()
            cpu = reducer.stats["cpu_s"] - cpu0
            proc = _proc_cpu_s(reducer.worker_pid())
            for _name, body in out:
                rec.taken.setdefault(body["obs_id"], {"t": t, "worker_s": cpu,
                                                      "worker_cpu1": proc})
        return out

    reducer.submit, reducer.events = spy_submit, timed_events


def _indi_device(port: int, reference: str, rec: _Recorder):
    import xml.etree.ElementTree as ET

    class TimedParser(ET.XMLPullParser):
        def read_events(self):
            for ev, el in super().read_events():
                if ev == "start" and el.tag == "setBLOBVector":
                    rec.blob_start.append(time.monotonic())
                yield ev, el

    ET.XMLPullParser = TimedParser  # the client makes its parser at each connection

    from drivers.framephot import FrameReducer
    from drivers.indi import IndiClient, IndiTelescope

    client = IndiClient("127.0.0.1", port, retry_s=0.5)
    take_in = client._take_in_blob

    def timed_take_in(device, name, one):
        t0 = time.monotonic()
        n = client.blob_stats["received"]
        take_in(device, name, one)
        if client.blob_stats["received"] > n:
            rec.blobs.append({"start": rec.blob_start[-1] if rec.blob_start else None,
                              "parsed": t0, "decoded": client.blobs[-1].received,
                              "bytes": len(client.blobs[-1].data)})

    client._take_in_blob = timed_take_in
    reducer = FrameReducer(reference=reference)
    _instrument_reducer(reducer, rec)
    dev = IndiTelescope(DEVICE, "xl", 1, "g", client, dome=None, lat_deg=SITE_LAT,
                        lon_deg=SITE_LON, elev_m=SITE_ELEV, reducer=reducer,
                        frame_timeout_s=30.0)
    submit = dev.frames._submit

    def timed_submit(exp, blob):
        t0 = time.monotonic()
        submit(exp, blob)
        rec.submits.setdefault(exp.meta.obs_id, {})["loop_s"] = time.monotonic() - t0
        rec.submits[exp.meta.obs_id]["blob_received"] = blob.received

    dev.frames._submit = timed_submit
    dev.start(timeout_s=30.0)
    reducer.worker_pid()  # the worker up before the first frame

    def close():
        dev.close()
        client.close()

    return dev, close


def _alpaca_device(port: int, reference: str, rec: _Recorder):
    from drivers.alpaca import AlpacaClient, AlpacaTelescope
    from drivers.alpaca.frames import AlpacaFrames, FrameOptions
    from drivers.framephot import FrameReducer

    client = AlpacaClient("127.0.0.1", port, poll_s=0.25)
    frames = AlpacaFrames(client, FrameReducer(reference, None), FrameOptions())
    _instrument_reducer(frames.reducer, rec)
    frame = frames._frame

    def timed_frame(exp):
        t0 = time.monotonic()
        out = frame(exp)
        rec.downloads[exp.meta.obs_id] = {"t0": t0, "t1": time.monotonic(),
                                          **{k: v for k, v in frames.last_download.items()
                                             if k != "shape"}}
        return out

    frames._frame = timed_frame
    tel = AlpacaTelescope(DEVICE, "xl", 1, "g", client, lat_deg=SITE_LAT, lon_deg=SITE_LON,
                          frames=frames)
    tel.start(timeout_s=30.0)
    frames.reducer.worker_pid()

    def close():
        tel.close()
        client.close()

    return tel, close


def bridge_process(kind: str, port: int, reference: str, endpoint: str, conn) -> None:
    """The bridge: its device and DeviceHost until the parent says stop; then what it
    recorded, through ``conn``."""
    from drivers.device import DeviceHost

    rec = _Recorder()
    try:
        dev, close = (_indi_device if kind == "indi" else _alpaca_device)(port, reference, rec)
    except Exception as exc:  # reported by the parent in its JSON
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    host = DeviceHost([dev], endpoint)
    step = host.step

    def timed_step(timeout_ms: int = 50) -> None:
        rec.turns.append(time.monotonic())
        step(timeout_ms)

    host.step = timed_step
    conn.send({"ready": True})
    host.run(conn.poll)  # the parent's message ends it
    conn.recv()
    host.close()
    extra = {"frames": getattr(dev.frames, "stats", {}),
             "reducer": dict(dev.frames.reducer.stats)}
    if kind == "indi":
        extra["blob_stats"] = dict(dev.client.blob_stats)
    close()
    last = {s: (d, h.tostring()) for s, (d, h) in rec.last_frame.items()}
    conn.send({"turns": rec.turns, "blobs": rec.blobs, "submits": rec.submits,
               "downloads": rec.downloads, "taken": rec.taken, "last_frame": last, **extra})


class Bridge:
    def __init__(self, kind: str, port: int, reference: Path, brain: Brain):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=bridge_process, name=f"bridge-{kind}",
                                args=(kind, port, str(reference), brain.endpoint, child))
        self.proc.start()
        if not self.conn.poll(90.0):
            self.kill()
            raise SystemExit(json.dumps({"bench": "bridge_frames", "bridge": kind,
                                         "error": "the bridge did not start in 90 s"}))
        msg = self.conn.recv()
        if "error" in msg:
            self.proc.join(10)
            raise SystemExit(json.dumps({"bench": "bridge_frames", "bridge": kind,
                                         "error": msg["error"]}))
        try:
            brain.wait(lambda: DEVICE in brain.link.up_devices(), 20.0,
                       "the bridge's WELCOME")
        except BaseException:
            self.kill()
            raise

    def finish(self) -> dict:
        self.conn.send("stop")
        if not self.conn.poll(60.0):
            self.kill()
            raise SystemExit(json.dumps({"bench": "bridge_frames",
                                         "error": "the bridge did not report"}))
        out = self.conn.recv()
        self.proc.join(30)
        return out

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)


# Analysis ----------------------------------------------------------------------------
def analyse(kind: str, runs: list[dict], rec: dict, brain: Brain, baseline: dict) -> dict:
    """One frame size's figures from the brain's timings and the bridge's records."""
    lat, expo, handoff, to_brain, worker, worker_cpu = [], [], [], [], [], []
    gap_in, gap_out = [0.0], [0.0]  # turn gaps overlapping the transfer, and the others
    out: dict = {"exposures": len(runs)}
    turns = np.asarray(rec["turns"])
    rtts = []
    for r in runs:
        lat.append(r["t_det"] - r["t_done"])
        expo.append(r["t_done"] - r["t_send"])
        rtts += [rt for sent, rt in brain.rtts if r["t_send"] <= sent <= r["t_det"]]
        taken, sub = rec["taken"].get(r["obs_id"]), rec["submits"].get(r["obs_id"], {})
        if taken and "t" in sub:
            worker.append(taken["worker_s"])
            worker_cpu.append(taken["worker_cpu1"] - sub["worker_cpu0"])
            handoff.append(taken["t"] - sub["t"] - taken["worker_s"])
            to_brain.append(r["t_det"] - taken["t"])
        if kind == "indi":
            b = next((b for b in rec["blobs"] if b["decoded"] == sub.get("blob_received")),
                     None)
            r["blob"] = b
            window = (b["start"] or b["parsed"], b["decoded"]) if b else None
        else:
            d = rec["downloads"].get(r["obs_id"])
            r["download"] = d
            window = (d["t0"], d["t1"]) if d else None
        t = turns[(turns >= r["t_send"]) & (turns <= r["t_det"])]
        for a, z in pairwise(t.tolist()):
            during = window is not None and a < window[1] and z > window[0]
            (gap_in if during else gap_out).append(float(z - a))
    out["latency_s"] = _stats(lat)
    out["expose_cmd_s"] = _stats(expo)
    out["sources_sent"] = [r["sources"] for r in runs]
    if kind == "indi":
        tr, after, loop_s, size = [], [], [], None
        for r in runs:
            b = r.pop("blob")
            if b is None:
                continue
            size = b["bytes"]
            if b["start"] is not None:
                tr.append(b["decoded"] - b["start"])
            after.append(b["decoded"] - r["t_done"])
            loop_s.append(rec["submits"].get(r["obs_id"], {}).get("loop_s"))
        out["blob_bytes"] = size
        out["blob_transfer_s"] = _stats(tr)
        out["blob_decoded_after_done_s"] = _stats(after)
        out["loop_submit_s"] = _stats(loop_s)
    else:
        dl = [d for d in (r.pop("download") for r in runs) if d]
        out["download_bytes"] = dl[-1]["bytes"] if dl else None
        out["transfer"] = dl[-1]["transfer"] if dl else None
        out["download_s"] = _stats([d["download_s"] for d in dl])
        out["properties_s"] = _stats([d["properties_s"] for d in dl])
        out["convert_s"] = _stats([d["convert_s"] for d in dl])
        out["download_started_after_done_s"] = _stats(
            [d["t0"] - r["t_done"] for r, d in zip(runs, dl, strict=False)])
    out["pipeline_worker_s"] = _stats(worker)
    out["pipeline_worker_cpu_s"] = _stats(worker_cpu, 2)  # /proc: 10 ms ticks
    out["handoff_s"] = _stats(handoff)
    out["event_to_brain_s"] = _stats(to_brain)
    out["loop_gap_max_s"] = round(max(gap_in + gap_out), 3)
    out["loop_gap_max_during_transfer_s"] = round(max(gap_in), 3)
    out["loop_gap_max_otherwise_s"] = round(max(gap_out), 3)
    out["status_pings"] = len(rtts)
    out["status_rtt_s"] = {**_stats(rtts), "p99": round(float(np.percentile(rtts, 99)), 3)
                           if rtts else None}
    out.update(baseline)
    if out["latency_s"]["median"] is not None and baseline.get("baseline_reduce_s"):
        out["bridge_adds_s"] = round(out["latency_s"]["median"]
                                     - baseline["baseline_reduce_s"], 3)
    return out


def run_baseline(frame: tuple, reference: Path) -> dict:
    """reduce_frame on the bridge's own frame and header, here, BASELINE_RUNS times."""
    data, text = frame
    header = fits.Header.fromstring(text)
    stars = StarCatalogue.read(reference)
    meta = FrameMeta("baseline", 7, "g", time.time(), 20.0)
    wall, cpu, body = [], [], None
    for _ in range(BASELINE_RUNS):
        w0, c0 = time.perf_counter(), time.process_time()
        body = reduce_frame(data, header, meta, stars, None)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    s = body["_summary"]
    return {"baseline_reduce_s": round(statistics.median(wall), 3),
            "baseline_reduce_cpu_s": round(statistics.median(cpu), 3),
            "baseline_sources": s["sources"], "baseline_sent": s["sent"],
            "baseline_zp_stars": s["zero_point_stars"]}


# INDI --------------------------------------------------------------------------------
def indi_sky(root: Path, ra0: float, side: int) -> tuple[np.ndarray, Path]:
    """A side² frame at (ra0, INDI_DEC), 1"/pixel, in INDI's orientation; its stars as
    the calibration CSV. Returns (the frame as the camera's file holds it, the CSV)."""
    from simulator.frames import FrameSpec, render_frame, star_field

    spec = FrameSpec(ra_deg=ra0, dec_deg=INDI_DEC, nx=side, ny=side, pixel_scale_arcsec=1.0,
                     exposure_s=30.0, m5=20.0, band="g")
    rng = np.random.default_rng(7)
    n = int(STARS_PER_MPX * side * side / 1024 ** 2)
    ra, dec, mag = star_field(spec, n, rng, mag_bright=13.0, margin_px=20.0)
    img, _h = render_frame(spec, ra, dec, mag, rng)
    img = np.fliplr(img).astype(np.uint16)  # RA growing with x, as INDI's WCS has it
    csv = root / "stars_g.csv"
    csv.write_text("ra_deg,dec_deg,mag\n" + "".join(
        f"{a:.8f},{d:.8f},{m:.4f}\n" for a, d, m in zip(ra, dec, mag, strict=True)))
    return img, csv


def indi_bench(tmp: Path, sizes: list[int], n_exp: int) -> dict:
    from loopback import free_port, start_server, stop_group

    from drivers.indi import IndiClient, lst_deg

    missing = [e for e in ("indiserver", *SIMULATORS) if shutil.which(e) is None]
    if missing:
        return {"bench": "bridge_frames", "bridge": "indi", "skipped":
                f"{', '.join(missing)} not on PATH (apt-get install indi-bin)"}
    t0 = time.monotonic()
    root = tmp / "indi"
    (root / "home").mkdir(parents=True)
    ra0 = lst_deg(time.time(), SITE_LON) % 360.0
    side = max(sizes)
    img, csv = indi_sky(root, ra0, side)
    dirs = {}
    for s in sizes:  # a smaller frame: the big one's centre (same optical axis)
        lo = (side - s) // 2
        hdr = fits.Header()
        hdr["PIXSIZE1"], hdr["PIXSIZE2"] = PIXEL_UM, PIXEL_UM
        dirs[s] = root / f"frames{s}"
        dirs[s].mkdir()
        fits.PrimaryHDU(img[lo:lo + s, lo:lo + s], hdr).writeto(dirs[s] / "field.fits")
    port = free_port()
    env = {**os.environ, "HOME": str(root / "home")}
    server = start_server([shutil.which("indiserver"), "-p", str(port), "-u",
                           f"/tmp/sitian-bench-indi-{os.getpid()}-{port}", *SIMULATORS],
                          port, root / "indiserver.log", env=env, cwd=root / "home")
    ctl = IndiClient("127.0.0.1", port, retry_s=0.5)  # the bench's own: no BLOBs
    brain, bridge = Brain(), None
    try:
        ctl.start(wait_s=20.0)
        bridge = Bridge("indi", port, csv, brain)

        def setp(kind: str, prop: str, values: dict, check) -> None:
            getattr(ctl, f"new_{kind}")(CCD if prop != "TELESCOPE_TRACK_STATE" else MOUNT,
                                       prop, values)
            brain.wait(check, 15.0, f"INDI {prop}")

        setp("text", "ACTIVE_DEVICES", {"ACTIVE_TELESCOPE": MOUNT},
             lambda: ctl.value(CCD, "ACTIVE_DEVICES", "ACTIVE_TELESCOPE") == MOUNT)
        setp("number", "SCOPE_INFO", {"FOCAL_LENGTH": FOCAL_MM, "APERTURE": 200.0},
             lambda: ctl.value(CCD, "SCOPE_INFO", "FOCAL_LENGTH") == FOCAL_MM)
        setp("switch", "WCS_CONTROL", {"WCS_ENABLE": True, "WCS_DISABLE": False},
             lambda: ctl.value(CCD, "WCS_CONTROL", "WCS_ENABLE") is True)
        setp("number", "CCD_ROTATION", {"CCD_ROTATION_VALUE": 0.0},
             lambda: getattr(ctl.get(CCD, "CCD_ROTATION"), "state", None) == "Ok")
        assert brain.done("open") == {}
        setp("switch", "TELESCOPE_TRACK_STATE", {"TRACK_ON": True, "TRACK_OFF": False},
             lambda: ctl.value(MOUNT, "TELESCOPE_TRACK_STATE", "TRACK_ON") is True)
        t1 = time.monotonic()
        brain.done("slew", {"ra_deg": ra0, "dec_deg": INDI_DEC}, timeout_s=200.0)
        slew_s = time.monotonic() - t1
        setup_s = time.monotonic() - t0
        runs: dict[int, list[dict]] = {}
        for s in sizes:
            loc = str(dirs[s])
            setp("text", "CCD_DIRECTORY_LOCATION", {"LOCATION": loc},
                 lambda loc=loc: ctl.value(CCD, "CCD_DIRECTORY_LOCATION", "LOCATION") == loc)
            setp("switch", "CCD_DIRECTORY_TOGGLE", {"INDI_ENABLED": True,
                                                    "INDI_DISABLED": False},
                 lambda: ctl.value(CCD, "CCD_DIRECTORY_TOGGLE", "INDI_ENABLED") is True)
            runs[s] = [brain.expose(f"indi-{s}-{k}") for k in range(n_exp)]
        rec = bridge.finish()
        bridge = None
    finally:
        if bridge is not None:
            bridge.kill()
        ctl.close()
        stop_group(server)
        brain.close()
    out = {"bench": "bridge_frames", "bridge": "indi", "setup_s": round(setup_s, 1),
           "slew_s": round(slew_s, 1)}
    for s in sizes:
        base = run_baseline(rec["last_frame"][s], csv) if s in rec["last_frame"] else {}
        out[f"frame_{s}"] = analyse("indi", runs[s], rec, brain, base)
    out["bridge_stats"] = {"frames": rec["frames"], "reducer": {
        k: round(v, 3) for k, v in rec["reducer"].items()}, "blobs": rec["blob_stats"]}
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


# Alpaca ------------------------------------------------------------------------------
def alpaca_sky(root: Path, ra0: float, dec0: float, side: int) -> tuple[Path, Path]:
    """A jittered grid of stars (G 13-17.5) covering a side² frame: the simulator's
    catalogue and the calibration CSV."""
    from alpaca_rig import write_catalogue

    from drivers.photometry.astrometry import deproject

    rng = np.random.default_rng(20260616)
    n = int(side * 0.9 / GRID_PITCH_PX) + 1
    k = (np.arange(n) - (n - 1) / 2) * GRID_PITCH_PX
    xi, eta = np.meshgrid(k, k)
    xi = (xi.ravel() + rng.uniform(-10, 10, xi.size)) * ALPACA_SCALE / 3600
    eta = (eta.ravel() + rng.uniform(-10, 10, eta.size)) * ALPACA_SCALE / 3600
    ra, dec = deproject(xi, eta, ra0, dec0)
    mag = rng.uniform(13.0, 17.5, ra.size)
    db, csv = root / "sky.db", root / "calibration.csv"
    write_catalogue(db, ra, dec, mag)
    csv.write_text("ra_deg,dec_deg,mag\n" + "".join(
        f"{r:.8f},{d:.8f},{m:.4f}\n" for r, d, m in zip(ra, dec, mag, strict=True)))
    return db, csv


def alpaca_bench(tmp: Path, sizes: list[int], n_exp: int) -> dict:
    try:
        from alpaca_rig import start_simulator
    except ModuleNotFoundError as exc:
        return {"bench": "bridge_frames", "bridge": "alpaca",
                "skipped": f"{exc.name} not installed (the dev extra)"}
    from loopback import stop_group

    from drivers.sky import lst_deg

    t0 = time.monotonic()
    ra0, dec0 = (lst_deg(time.time(), SITE_LON) + 15.0) % 360.0, 40.0
    out = {"bench": "bridge_frames", "bridge": "alpaca", "setup_s": 0.0}
    stats = {}
    for s in sizes:
        root = tmp / f"alpaca{s}"
        root.mkdir(parents=True)
        db, csv = alpaca_sky(root, ra0, dec0, max(sizes))
        t1 = time.monotonic()
        sim = start_simulator(root, db, equatorial_system=2, camera=dict(
            cameraxsize=s, cameraysize=s, numx=s, numy=s, exposuremin=0.01))
        brain, bridge = Brain(), None
        try:
            bridge = Bridge("alpaca", sim.port, csv, brain)
            assert brain.done("open") == {}
            brain.done("slew", {"ra_deg": ra0, "dec_deg": dec0})
            out["setup_s"] += time.monotonic() - t1
            runs = [brain.expose(f"alpaca-{s}-{k}") for k in range(n_exp)]
            rec = bridge.finish()
            bridge = None
        finally:
            if bridge is not None:
                bridge.kill()
            stop_group(sim.proc)
            brain.close()
        base = run_baseline(rec["last_frame"][s], csv) if s in rec["last_frame"] else {}
        out[f"frame_{s}"] = analyse("alpaca", runs, rec, brain, base)
        stats[s] = {"frames": {k: round(v, 3) for k, v in rec["frames"].items()},
                    "reducer": {k: round(v, 3) for k, v in rec["reducer"].items()}}
    out["setup_s"] = round(out["setup_s"], 1)
    out["bridge_stats"] = stats
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--exposures", type=int, default=EXPOSURES, help="per bridge and size")
    p.add_argument("--sizes", default="2048,1024", help="frame sides, pixels")
    p.add_argument("--bridges", default="indi,alpaca")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-frames-"))
    results = []
    try:
        for kind in args.bridges.split(","):
            res = (indi_bench if kind == "indi" else alpaca_bench)(tmp, sizes, args.exposures)
            res["load_avg"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict = {"bench": "bridge_frames", "summary": True, "sizes": sizes,
                     "exposures": args.exposures}
    for res in results:
        for s in sizes:
            f = res.get(f"frame_{s}")
            if not f:
                continue
            summary[f"{res['bridge']}_{s}"] = {
                "latency_median_s": f["latency_s"]["median"],
                "latency_max_s": f["latency_s"]["max"],
                "baseline_reduce_s": f.get("baseline_reduce_s"),
                "bridge_adds_s": f.get("bridge_adds_s"),
                "transfer_median_s": (f.get("blob_transfer_s") or f.get("download_s")
                                      or {}).get("median"),
                "loop_gap_max_s": f["loop_gap_max_s"],
                "status_rtt_max_s": f["status_rtt_s"]["max"]}
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    summary["cpus"] = os.cpu_count()
    summary["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
