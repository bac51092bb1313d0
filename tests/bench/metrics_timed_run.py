"""``brain run`` with the CPU its metrics take measured on the threads that spend it.

bench_metrics starts this in place of ``python -m brain`` for its attribution runs:
``python tests/bench/metrics_timed_run.py OUT.json run ...``. Before the daemon starts,
every piece of code that exists only for the metrics is wrapped in a thread-CPU timer:

* on the loop: the plain counters and histograms (``drivers.loopmetrics``), any
  prometheus_client ``labels``/``inc``/``set``/``observe``, the daemon's metric hooks
  (``DaemonMetrics.exposure``/``visit``/``classified``/``spectrum``, with their
  30-minute windows) and the link's (``LinkMetrics``: counted in full, although its
  plain counts also run with metrics off, so this errs high);
* the scrapes: every HTTP request thread of the /metrics server from start to end
  (parsing, the collectors, the encoding, the reply), plus the server's own thread.

``BENCH_SPLIT=1`` reports one bucket per method instead of ``hooks``.

Nested calls are timed once (the outermost). The timer's own cost inside the interval
is measured at exit on a no-op and reported apart (``timer_ns_per_call``), so the
figure can be read both raw (an upper bound) and corrected. At exit the totals go to
OUT.json; the denominator (the loop's CPU, all threads) is in the daemon's log.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time

_local = threading.local()
_acc: list[dict] = []  # one {bucket: [ns, calls]} per thread that spent any
_acc_lock = threading.Lock()
_server_threads: list[int] = []


def _bucket(name: str) -> list[int]:
    acc = getattr(_local, "acc", None)
    if acc is None:
        acc = _local.acc = {}
        with _acc_lock:
            _acc.append(acc)
    return acc.setdefault(name, [0, 0])


def timed(fn, bucket: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_local, "inside", False):
            return fn(*args, **kwargs)
        _local.inside = True
        t0 = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.thread_time_ns() - t0
            _local.inside = False
            b = _bucket(bucket)
            b[0] += dt
            b[1] += 1
            if dt > 100_000:
                _bucket(bucket + ">100us")[0] += dt
                _bucket(bucket + ">100us")[1] += 1
    return wrapper


def install() -> None:
    import socketserver

    from prometheus_client import metrics as pm

    from brain.opsmetrics import DaemonMetrics, MetricsServer
    from drivers.link import LinkMetrics
    from drivers.loopmetrics import LoopCounter, LoopHistogram

    split = bool(os.environ.get("BENCH_SPLIT"))  # one bucket per method (diagnosis)
    for cls, names in ((pm.MetricWrapperBase, ("labels",)), (pm.Counter, ("inc",)),
                       (pm.Gauge, ("set", "inc", "dec")), (pm.Histogram, ("observe",)),
                       (LoopCounter, ("inc",)), (LoopHistogram, ("observe",)),
                       (DaemonMetrics, ("exposure", "visit", "classified", "spectrum")),
                       (LinkMetrics, ("inc", "error", "latency"))):
        for name in names:
            bucket = f"{cls.__name__}.{name}" if split else "hooks"
            setattr(cls, name, timed(getattr(cls, name), bucket))
    # Each scrape is served on its own thread (ThreadingMixIn): time all of it.
    socketserver.ThreadingMixIn.process_request_thread = timed(
        socketserver.ThreadingMixIn.process_request_thread, "scrapes")
    serve = MetricsServer._serve

    def serve_loop(self):  # the server's accept loop, its thread's CPU read at exit
        _server_threads.append(threading.get_ident())
        return serve(self)

    MetricsServer._serve = serve_loop


def _timer_cost_ns(n: int = 200_000) -> float:
    f = timed(lambda: None, "_calibration")
    for _ in range(n):
        f()
    b = _bucket("_calibration")
    return b[0] / max(1, b[1])


def report(path: str) -> None:
    totals: dict[str, list[int]] = {}
    with _acc_lock:
        for acc in _acc:
            for k, (ns, n) in acc.items():
                t = totals.setdefault(k, [0, 0])
                t[0] += ns
                t[1] += n
    server_ns = 0
    for ident in _server_threads:
        try:
            server_ns += time.clock_gettime_ns(time.pthread_getcpuclockid(ident))
        except (OSError, ProcessLookupError):
            pass  # the thread is gone
    out = {k: {"cpu_s": ns / 1e9, "calls": n} for k, (ns, n) in totals.items()}
    out["server_thread"] = {"cpu_s": server_ns / 1e9}
    out["timer_ns_per_call"] = _timer_cost_ns()
    with open(path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    out_path, argv = sys.argv[1], sys.argv[2:]
    install()
    atexit.register(report, out_path)
    from brain.cli import main

    sys.exit(main(argv))
