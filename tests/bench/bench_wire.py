"""Wire-mode night: ``brain run`` + ``brain sim-drivers`` over SBP1 on loopback, against
the fast shell on the same sky and weather (issue 5's targets).

The daemon and the simulated drivers run as two processes on a simulated clock at
``SPEED`` times real time over ``HOURS`` of an all-dark night; the fast shell simulates the
whole night in-process (the baseline of the same run). Both observation logs are scored
with the same coverage code (docs/contracts.md: 3-band union area per 30-minute window) over
the windows after the wire run's first half hour (the fast shell has been observing
since dusk; the daemon starts cold). Also reported: exposures per telescope-hour, the
wall time of the daemon's loop (journalled at its exit) and how long an exposure's DONE
took to be handled, in world seconds (each wall millisecond of latency costs 0.1 s of
telescope time at 100x): a daemon that falls behind its clock shows up there and as
fewer exposures.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SEED, DATE = 7, "2026-12-15"
T0 = "2026-12-15T13:30:00"  # every site dark (Muztagh-ata from about 13:10 UTC)
HOURS = 3.0
SPEED = 100.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def main() -> None:
    from brain.config import load_config, with_climate
    from brain.ops.survey_metrics import coverage_windows, observations_array
    from brain.shells.fast import simulate
    from observatory.sky import AreaLattice, FieldGrid
    from observatory.visibility import NightCache
    from simulator.environment import make_environment

    config = with_climate(load_config(), "clear")
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=2)
    env = make_environment(config, SEED, DATE, 1, "clear", cache)
    t0, t1 = _unix(T0), _unix(T0) + HOURS * 3600

    # Wire mode -------------------------------------------------------------------------
    tmp = Path(tempfile.mkdtemp(prefix="bench-wire-"))
    router, pub = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    common = ["--start", T0, "--speed", str(SPEED), "--router", router, "--pub", pub]
    journal = tmp / "journal.sqlite"
    log = (tmp / "log.txt").open("w")
    drivers = subprocess.Popen([sys.executable, "-m", "brain", "sim-drivers", *common,
                                "--seed", str(SEED), "--weather", "clear"], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    w0 = time.monotonic()
    until = datetime.fromtimestamp(t1, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    daemon = subprocess.Popen([sys.executable, "-m", "brain", "run", *common, "--journal",
                               str(journal), "--metrics-port", "0", "--hosting", "local",
                               "--until", until],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    rc = daemon.wait(timeout=HOURS * 3600 / SPEED + 300)
    wire_wall = time.monotonic() - w0
    drivers.send_signal(signal.SIGTERM)
    drivers.wait(30)
    log.close()
    if rc != 0:
        print(json.dumps({"bench": "wire_night", "error": f"daemon exited {rc}",
                          "log": (tmp / "log.txt").read_text()[-2000:]}))
        return
    con = sqlite3.connect(journal)
    wire_rows = [tuple(r) for r in con.execute("SELECT * FROM observations")]
    first_up = con.execute("SELECT MIN(t) FROM events WHERE name='up'").fetchone()[0]
    n_up = con.execute("SELECT COUNT(DISTINCT device) FROM events WHERE name='up'").fetchone()[0]
    statuses = dict(con.execute("SELECT status, COUNT(*) FROM commands GROUP BY status"))
    # How long the daemon's loop ran (its world clock runs at SPEED from the start of the
    # loop, once its ephemerides are ready; whether it kept up shows in the DONE lag and
    # the coverage, not in the clock).
    run_wall = con.execute("SELECT run_wall_s FROM sessions").fetchone()[0]
    # Reaction: exposure end (device's world time) to its DONE handled by the daemon.
    lag = np.array([t_done - json.loads(res)["t_end"] for t_done, res in con.execute(
        "SELECT t_end, result FROM commands WHERE name='expose' AND status='done'")])
    con.close()

    # Fast shell, the same night ------------------------------------------------------
    f0 = time.perf_counter()
    result = simulate(config, env, cache=cache)
    fast_wall = time.perf_counter() - f0
    lattice = AreaLattice(grid)
    night, sky = cache.get(DATE)
    weather = {s.id: env.weather[(0, s.id)] for s in config.sites}

    def score(rows):
        obs = observations_array(rows)
        wins = coverage_windows(config, obs, [night], [sky], [weather], lattice)
        # windows fully inside the wire run, after its first half hour
        sel = [w for w in wins if w["t0"] >= max(t0, first_up) + 1800 and w["t0"] + 1800 <= t1]
        cov = [w["covered_deg2"] for w in sel]
        inside = obs[(obs["t_start"] >= sel[0]["t0"]) & (obs["t_start"] < sel[-1]["t0"] + 1800)]
        hours = len(sel) * 0.5
        return {"windows": len(sel), "coverage_median_deg2": float(np.median(cov)),
                "exposures_per_telescope_hour": round(len(inside) / (hours * 54), 2)}

    wire, fast = score(wire_rows), score(result.world.observations)
    ratio = wire["coverage_median_deg2"] / fast["coverage_median_deg2"]
    print(json.dumps({
        "bench": "wire_night", "world_hours": HOURS, "speed": SPEED,
        "wire_wall_s": round(wire_wall, 1), "loop_wall_s": round(run_wall, 1),
        "done_lag_world_s": {"p50": round(float(np.median(lag)), 2),
                             "p99": round(float(np.percentile(lag, 99)), 2)},
        "devices_up": n_up, "commands": statuses,
        "wire": wire, "fast": fast, "fast_wall_s_whole_night": round(fast_wall, 1),
        "coverage_ratio_wire_over_fast": round(ratio, 3),
        "target": "speedup >= 100 and coverage within a few percent of the fast shell",
        "meets_target": bool(SPEED >= 100 and abs(ratio - 1) <= 0.05)}))


if __name__ == "__main__":
    main()
