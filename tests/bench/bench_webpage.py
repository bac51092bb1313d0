"""The operator web page in headless Chromium (issue 21, part 4; docs/operator-page.md).

A rehearsal of the default 54-telescope array (``brain run --hosting local`` and ``brain
sim-drivers`` at 60x, all three sites dark), once the survey runs and the first
classification has made candidates, its page opened ``--loads`` times in Debian's
headless ``chromium`` (selenium, ``/usr/bin/chromedriver``), each time in a fresh tab:

* ``first_paint_ms``, ``first_contentful_paint_ms``: the Performance API's paint entries
  (``performance.getEntriesByType('paint')``), median over the loads; the target is under
  2000 ms. As the in-run baseline, the same browser opens an empty page served by a
  stdlib HTTP server in this process (``baseline_*``): what the browser costs by itself;
* ``first_data_ms``: when the page has drawn its first snapshot (``data-ready-ms``);
* ``data_age_s_max``/``_median``: the age the page shows (``#age``), sampled every 0.5 s
  for ``--watch-s`` seconds; the target is at most 5 s;
* ``snapshot_ms_median``/``_max`` (wall) and ``snapshot_cpu_ms_*`` (the loop thread's
  CPU): what building and publishing a snapshot costs the daemon's loop, once a second,
  from its log at stop (the wall time includes waiting for the GIL while other threads
  of the daemon run); ``state_bytes``: the JSON's size.

Prints one JSON line, with the load average (a shared 2-core machine slows everything).

    PYTHONPATH=. .venv/bin/python tests/bench/bench_webpage.py [--loads N] [--watch-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import brain_cmd, stop_procs  # noqa: E402

START = "2026-12-15T14:00:00"  # every site of the default array is dark
SPEED = "60"
EMPTY = b"<!DOCTYPE html><html><head><title>empty</title></head><body><p>empty</p></body></html>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Empty(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(EMPTY)))
        self.end_headers()
        self.wfile.write(EMPTY)

    def log_message(self, *args):
        pass


def paints(driver, url: str, ready: bool) -> dict:
    driver.switch_to.new_window("tab")
    driver.get(url)
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end:
        entries = driver.execute_script(
            "return performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
        got = dict(entries)
        done = "first-contentful-paint" in got and (
            not ready or driver.execute_script("return document.body.dataset.readyMs"))
        if done:
            break
        time.sleep(0.1)
    out = {"fp": got.get("first-paint"), "fcp": got.get("first-contentful-paint")}
    if ready:
        out["data"] = float(driver.execute_script("return document.body.dataset.readyMs"))
    driver.close()
    driver.switch_to.window(driver.window_handles[0])
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--watch-s", type=float, default=30.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-webpage-"))
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    web = free_port()
    url = f"http://127.0.0.1:{web}/"
    link = ["--start", START, "--speed", SPEED, "--router", router, "--pub", pub]
    log = (tmp / "rehearsal.log").open("w")
    daemon = subprocess.Popen(brain_cmd("run", *link, "--journal", str(tmp / "journal.sqlite"),
                                        "--hosting", "local", "--metrics-port", "0",
                                        "--web-port", str(web)),
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    drivers = subprocess.Popen(brain_cmd("sim-drivers", *link, "--weather", "clear"),
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    empty = ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    threading.Thread(target=empty.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1200", f"--user-data-dir={tmp / 'chromium'}"):
        opts.add_argument(a)
    driver = None
    try:
        t_end = time.monotonic() + 300
        state = None
        while time.monotonic() < t_end:  # the rehearsal running: groups up, exposures
            if daemon.poll() is not None or drivers.poll() is not None:
                raise RuntimeError("the rehearsal exited early: "
                                   + (tmp / "rehearsal.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(url + "api/state", timeout=5) as r:
                    body = r.read()
                state = json.loads(body)["state"]
                if state["summary"]["group_exposures"] >= 60 and state["candidates"]["n"]:
                    break  # the survey under way and the first classification made
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(1)
        else:
            raise RuntimeError("no exposures and candidates on the page within 300 s")
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
        base = [paints(driver, f"http://127.0.0.1:{empty.server_port}/", False)
                for _ in range(args.loads)]
        page = [paints(driver, url, True) for _ in range(args.loads)]
        driver.get(url)
        ages = []
        t_end = time.monotonic() + args.watch_s
        while time.monotonic() < t_end:
            age = driver.execute_script("return document.getElementById('age').dataset.age")
            ages.append(float(age) if age not in (None, "inf") else float("inf"))
            time.sleep(0.5)
        devices = len(driver.execute_script(
            "return [...new Set([...document.querySelectorAll('[data-device]')]"
            ".map(e => e.dataset.device))]"))
        with urllib.request.urlopen(url + "api/state", timeout=5) as r:
            body = r.read()
        state = json.loads(body)["state"]
    finally:
        if driver is not None:
            driver.quit()
        stop_procs((daemon, drivers), 30)
        empty.shutdown()
        log.close()
    text = (tmp / "rehearsal.log").read_text()
    m = re.search(r"a snapshot took ([\d.]+) ms of the loop, ([\d.]+) ms CPU \(medians of "
                  r"the last \d+; max ([\d.]+) ms, ([\d.]+) ms CPU\)", text)
    out = {
        "bench": "webpage", "loads": args.loads, "devices_shown": devices,
        "first_paint_ms": median(p["fp"] for p in page),
        "first_contentful_paint_ms": median(p["fcp"] for p in page),
        "first_paint_ms_max": max(p["fp"] or 0 for p in page),
        "first_data_ms": median(p["data"] for p in page),
        "baseline_first_paint_ms": median(p["fp"] for p in base),
        "baseline_first_contentful_paint_ms": median(p["fcp"] for p in base),
        "data_age_s_median": round(statistics.median(ages), 2),
        "data_age_s_max": round(max(ages), 2),
        "state_bytes": len(body),
        "candidates": state["candidates"]["n"], "group_exposures":
            state["summary"]["group_exposures"],
        "snapshot_ms_median": float(m.group(1)) if m else None,
        "snapshot_ms_max": float(m.group(3)) if m else None,
        "snapshot_cpu_ms_median": float(m.group(2)) if m else None,
        "snapshot_cpu_ms_max": float(m.group(4)) if m else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    out["first_paint_ok"] = bool(out["first_paint_ms_max"] and out["first_paint_ms_max"] < 2000)
    out["data_age_ok"] = out["data_age_s_max"] <= 5.0
    print(json.dumps(out))
    return 0 if out["first_paint_ok"] and out["data_age_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
