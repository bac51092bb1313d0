"""A rehearsal from frames against the catalogue rehearsal (issue 21).

Two rehearsals of the real brain (``brain run --hosting local``, greedy follow-up) with
``brain sim-drivers`` on one site's ``--groups`` groups (Xinglong, clear weather), the
same ``--start``, ``--speed`` and seed:

* ``frames``: ``--frames``: every exposure rendered as a ``--frame-px`` square frame
  (1"/pixel, centred on the field) and measured by the photometry pipeline;
* ``catalogue``: ``--frame-footprint``: the catalogue photometry, cropped to the same
  footprint (the comparison).

The sky is at ``sky.density_scale`` DENSITY and the brain classifies every CLASSIFY_S
world seconds, so that a few world minutes give candidates and classifications. Both
drivers make their sky at once; then the two brains run one after the other, each from
``--start`` for ``--minutes`` of world time.

From each run's journal: exposures, detections events, sources per exposure (over the
exposures whose detections arrived before the brain stopped), the share matched to a
simulated source (``truth``) and with a reference magnitude; the brain's candidate rule
(``candidate_ids``: at least 3 detections, new, not a reference star at its usual
brightness) applied to the journalled detections; from its object store, the objects
classified and their predicted classes. Reported: both, their ratios (frames over
catalogue), each run's wall time, and the frames worker's CPU per frame (its log).
Prints one JSON object. About 5 minutes on the 2-core development machine.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_frames_rehearsal.py [--groups 2]
        [--minutes 7] [--speed 4] [--frame-px 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from brain.core.association import Associator, DetectionBatch  # noqa: E402
from brain.core.followup import candidate_ids  # noqa: E402
from brain.shells.daemon_store import NightStore  # noqa: E402
from brain.shells.journal import unpack_arrays  # noqa: E402

START = "2026-12-15T15:30:00"  # Xinglong dark; the Galactic anticentre near the zenith
SEED = 7
CLASSIFY_S = 180.0  # the brain classifies every 3 world minutes (default 30)
DENSITY = 5.0  # sky.density_scale: five times the default sky's sources


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_config(tmp: Path, groups: int) -> Path:
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = f"frames-rehearsal-xl{groups}"
    d["sites"] = [dict(d["sites"][0], groups=groups)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("transients", {})["classify_interval_s"] = CLASSIFY_S
    d.setdefault("sky", {})["density_scale"] = DENSITY
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


class Drivers:
    """One ``brain sim-drivers`` (frames or catalogue), started at once and waited for."""

    def __init__(self, mode: str, config: Path, tmp: Path, args):
        self.mode, self.out = mode, tmp / mode
        self.out.mkdir()
        router, pub = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
        self.link = ["--config", str(config), "--start", args.start, "--speed",
                     str(args.speed), "--router", router, "--pub", pub]
        flag = "--frames" if mode == "frames" else "--frame-footprint"
        self.log = open(self.out / "drivers.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "brain", "sim-drivers", *self.link, "--seed", str(SEED),
             "--weather", "clear", flag, "--frame-px", str(args.frame_px)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.t0 = time.monotonic()
        self.ready_s: float | None = None

    def ready(self) -> bool:
        if self.ready_s is None and "serving" in (self.out / "drivers.log").read_text():
            self.ready_s = round(time.monotonic() - self.t0, 1)
        if self.proc.poll() is not None:
            raise SystemExit(json.dumps({"bench": "frames_rehearsal", "mode": self.mode,
                                         "error": "brain sim-drivers exited", "log": (
                                             self.out / "drivers.log").read_text()[-2000:]}))
        return self.ready_s is not None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def rehearsal(drv: Drivers, args) -> dict:
    """``brain run`` against drivers that are up, until ``--minutes`` of world time."""
    out = drv.out
    until = (datetime.fromisoformat(args.start) + timedelta(minutes=args.minutes)).isoformat()
    w0 = time.monotonic()
    with open(out / "daemon.log", "w") as dlog:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "brain", "run", *drv.link, "--journal",
             str(out / "journal.sqlite"), "--metrics-port", "0", "--hosting", "local",
             "--policy", "greedy", "--until", until],
            cwd=REPO, stdout=dlog, stderr=subprocess.STDOUT)
        rc = daemon.wait(timeout=args.minutes * 60 / args.speed + 600)
    wall = time.monotonic() - w0
    drv.stop()
    if rc != 0:
        raise SystemExit(json.dumps({"bench": "frames_rehearsal", "mode": drv.mode,
                                     "error": f"brain run exited {rc}",
                                     "log": (out / "daemon.log").read_text()[-2000:]}))
    return {"wall_s": round(wall, 1), "drivers_ready_s": drv.ready_s, **analyse(out)}


def analyse(out: Path) -> dict:
    """What one rehearsal's journal, object store and drivers' log hold."""
    con = sqlite3.connect(out / "journal.sqlite")
    exposures = con.execute("SELECT COUNT(*) FROM observations").fetchone()[0]
    fields = {r for r in con.execute("SELECT field_id, band FROM observations")}
    n_src, events, truth, ref, batches = [], set(), 0, 0, []
    for obs_id, _part, blob in con.execute("SELECT obs_id, part, arrays FROM detections "
                                           "ORDER BY t, obs_id, part"):
        a = unpack_arrays(blob)
        batches.append(NightStore._batch(a))
        events.add(obs_id)
        n_src.append(a["ra_deg"].size)
        truth += int((a["truth"] >= 0).sum()) if "truth" in a else 0
        ref += int(np.isfinite(a["ref_mag"]).sum()) if "ref_mag" in a else 0
    con.close()
    store = sqlite3.connect(out / "store.sqlite")
    classes = store.execute("SELECT value FROM store_meta WHERE key='classes'"
                            ).fetchone()[0].split(",")
    objs = store.execute("SELECT n_det, truth, prob FROM objects").fetchall()
    store.close()
    # The brain's candidate rule on the journalled detections: at least min_detections,
    # new, and not a star of the survey's reference (ref_mag) at its usual brightness.
    assoc = Associator(2.0)
    batch = DetectionBatch.concat([b for b in batches if len(b)])
    assoc.add(batch)
    rows = candidate_ids(assoc, 3, float(batch.mjd.max()), 3.0, 0.5, classified_only=False,
                         reference_mag=0.5)
    cand, real = int(rows.size), int((assoc.truth[rows] >= 0).sum())
    three = int((assoc.n_detections() >= 3).sum())
    predicted: dict[str, int] = {}
    for _n, _t, blob in objs:
        prob = np.frombuffer(zlib.decompress(blob), "<f4") if blob else np.zeros(0)
        if prob.size and prob.sum() > 0:
            name = classes[int(np.argmax(prob))]
            predicted[name] = predicted.get(name, 0) + 1
    sources = int(sum(n_src))
    res = {"exposures": exposures,
           "exposures_with_detections": len(events), "sources": sources,
           "detections_per_exposure": round(sources / max(len(events), 1), 3),
           "truth_matched_share": round(truth / max(sources, 1), 3),
           "ref_mag_known_share": round(ref / max(sources, 1), 3),
           "objects": assoc.n_objects, "objects_3_detections": three,
           "candidates": cand, "candidates_real": real,
           "classified": sum(predicted.values()),
           "classified_as": dict(sorted(predicted.items(), key=lambda kv: -kv[1])),
           "_fields": fields}
    text = (out / "drivers.log").read_text()
    per = re.findall(r"frames: (\d+) measured \(([\d.]+) s each\), (\d+) not measured", text)
    if per:
        res["frames_measured"], res["cpu_s_per_frame"], res["frames_not_measured"] = (
            int(per[-1][0]), float(per[-1][1]), int(per[-1][2]))
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--minutes", type=float, default=7.0, help="world minutes per rehearsal")
    p.add_argument("--speed", type=float, default=4.0)
    p.add_argument("--frame-px", type=int, default=2048)
    p.add_argument("--start", default=START)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-frames-"))
    config = small_config(tmp, args.groups)
    fov = yaml.safe_load(config.read_text())["camera"]["fov_deg2"]
    t0 = time.monotonic()
    # Both drivers make their sky at once (two cores), then each serves its own brain,
    # one rehearsal after the other (the idle one takes the brain's clock at its WELCOME).
    drivers = {mode: Drivers(mode, config, tmp, args) for mode in ("frames", "catalogue")}
    try:
        while not all(d.ready() for d in drivers.values()):
            time.sleep(0.5)
        runs = {mode: rehearsal(d, args) for mode, d in drivers.items()}
    finally:
        for d in drivers.values():
            if d.proc.poll() is None:
                d.proc.kill()
    f, c = runs["frames"], runs["catalogue"]
    same = len(f.pop("_fields") & c.pop("_fields"))

    def ratio(key):
        return round(f[key] / c[key], 3) if c[key] else None

    print(json.dumps({
        "bench": "frames_rehearsal", "groups": args.groups, "world_minutes": args.minutes,
        "speed": args.speed, "frame_px": args.frame_px,
        "field_fraction": round((args.frame_px / 3600) ** 2 / fov, 4),
        "frames": f, "catalogue": c, "same_field_band_pairs": same,
        "ratio_detections_per_exposure": ratio("detections_per_exposure"),
        "ratio_candidates": ratio("candidates"), "ratio_classified": ratio("classified"),
        "wall_s": round(time.monotonic() - t0, 1), "load_avg": [round(x, 2) for x in
                                                                 os.getloadavg()],
        "dir": str(tmp)}))


if __name__ == "__main__":
    main()
