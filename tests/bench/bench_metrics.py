"""What metrics cost the daemon (issue 7's target: under 2 % of its time).

The same rehearsal (``brain run`` + ``brain sim-drivers``, the default array, clear
weather, ``WORLD_H`` world hours from ``T0`` at ``SPEED`` x) runs with metrics off
(``--metrics-port 0``: no registry, nothing collected) and on (the port served and
scraped every ``SCRAPE_S`` wall seconds: 3 times the rate of deploy/prometheus). The
daemon's CPU time (user + system, all threads, from ``wait4``) is compared per exposure
journalled, counting the CPU of the daemon's loop only (from ``Daemon.run`` to its
close, all threads: the daemon logs it), not its start-up. Runs alternate off/on
``PAIRS`` times and the medians are compared (the baseline is the metrics-off run of
the same bench).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
T0, UNTIL = "2026-12-15T11:00:00", "2026-12-15T12:00:00"
SPEED = 100
SCRAPE_S = float(os.environ.get("BENCH_SCRAPE_S", "5.0"))
PAIRS = int(os.environ.get("BENCH_PAIRS", "3"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(metrics: bool, tmp: Path) -> dict:
    router, pub = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    common = ["--start", T0, "--speed", str(SPEED), "--router", router, "--pub", pub]
    mport = _port() if metrics else 0
    journal = tmp / f"journal-{time.monotonic_ns()}.sqlite"
    logfile = tmp / f"log-{time.monotonic_ns()}.txt"
    log = logfile.open("w")
    drivers = subprocess.Popen([sys.executable, "-m", "brain", "sim-drivers", *common,
                                "--seed", "1", "--weather", "clear"], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT)
    daemon = subprocess.Popen([sys.executable, "-m", "brain", "run", *common, "--journal",
                               str(journal), "--metrics-port", str(mport), "--hosting",
                               "local", "--policy", "greedy", "--until", UNTIL],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    scrapes = []
    stop = threading.Event()

    def scrape():
        while not stop.wait(SCRAPE_S):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics",
                                            timeout=5) as r:
                    scrapes.append(len(r.read()))
            except OSError:
                pass  # not serving yet, or gone

    th = threading.Thread(target=scrape, daemon=True)
    if metrics:
        th.start()
    _, status, ru = os.wait4(daemon.pid, 0)
    daemon.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    drivers.send_signal(signal.SIGTERM)
    drivers.wait(30)
    log.close()
    con = sqlite3.connect(journal)
    n_obs = con.execute("SELECT COUNT(*) FROM observations").fetchone()[0]
    loop_s = con.execute("SELECT run_wall_s FROM sessions").fetchone()[0]
    con.close()
    m = re.search(r"loop ran ([0-9.]+) s wall, ([0-9.]+) s CPU", logfile.read_text())
    return {"rc": daemon.returncode, "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "cpu_s": float(m.group(2)) if m else float("nan"),
            "exposures": n_obs, "loop_wall_s": loop_s, "scrapes": len(scrapes),
            "scrape_bytes": int(np.median(scrapes)) if scrapes else 0}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    runs = {"off": [], "on": []}
    for _ in range(PAIRS):
        for mode in ("off", "on"):
            runs[mode].append(run(mode == "on", tmp))
    bad = [r for rs in runs.values() for r in rs if r["rc"] != 0 or not r["exposures"]]
    if bad:
        print(json.dumps({"bench": "metrics", "error": "a rehearsal failed", "runs": runs,
                          "tmp": str(tmp)}))
        return 1
    per = {m: float(np.median([r["cpu_s"] / r["exposures"] for r in rs]))
           for m, rs in runs.items()}
    cost = per["on"] / per["off"] - 1
    print(json.dumps({
        "bench": "metrics", "world": [T0, UNTIL], "speed": SPEED, "scrape_every_s": SCRAPE_S,
        "pairs": PAIRS,
        "cpu_ms_per_exposure_off": round(per["off"] * 1e3, 3),
        "cpu_ms_per_exposure_on": round(per["on"] * 1e3, 3),
        "metrics_cost_fraction": round(cost, 4),
        "runs": runs, "target": "metrics_cost_fraction < 0.02",
        "meets_target": bool(cost < 0.02)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
