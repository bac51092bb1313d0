"""What the daemon loads while it already serves the array (issue 19: the telescopes never
wait for a model).

``run_daemon`` binds the device link and starts its loop as soon as the core has
tonight's ephemerides and the journal is read back; a device's HELLO is answered from
then on. What is slow and not needed to run the survey loads meanwhile, in
:class:`Background` stages (a thread each, a stage waiting for those it needs), which the
loop takes up as they finish (on its own thread, between two turns):

* ``models``: hosting ``ray``: ``ray`` (Ray started or joined), then side by side
  ``classifier`` (the classifier actor), ``policy`` (the follow-up policy actor;
  follow-up is held until it is ready) and ``desk`` (the operator desk: the daemon pushes
  its state there), then ``api`` (the operators' HTTP API; it answers, and says the
  planner is loading) and last ``planner`` (the vLLM engine: a minute or more on 2
  cores). Hosting ``local``: ``classifier`` and ``policy`` in the daemon's process.
* ``night_jobs``: tomorrow's ephemerides (seconds), then the night jobs start.

Meanwhile a :class:`PendingClassifier` stands in for the classifier: a classification
asked before the model is ready waits for it on the daemon's classification thread,
never on the loop. A stage that fails is logged in one line and its part stays off (the
survey goes on); a classification then fails with that line. The state of each part is
on ``/metrics`` as ``sitian_startup_ready{part}`` (1 once ready) and in the log (``...
ready after N s``, ``... did not load: ...``); the API's ``GET /status`` says
``"planner": "loading"`` until the planner is ready.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from brain.ops.hosting import connect, start_classifier, start_policy
from brain.planner.api import desk, start_api, start_planner
from observatory.taxonomy import CLASSES
from policies.classifier import TransientClassifier
from policies.followup import make_policy

log = logging.getLogger("brain.shells.daemon")

# (name, load, the stages it needs first)
Stage = tuple[str, Callable[[], Any], tuple[str, ...]]


class Background:
    """Each stage on a thread of its own, started together; a stage waits for the
    stages it needs (and fails if one of them did). Each result is handed to the loop by
    :meth:`apply` (its ``on_ready`` callbacks run there, not on the stage's thread).

    ``status[name]``: ``loading``, ``ready`` or ``failed: <one line>``."""

    def __init__(self, name: str, stages: list[Stage]):
        self.name = name
        self.stages = list(stages)
        self.status = {n: "loading" for n, _, _ in self.stages}
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}  # from start() to ready
        self._events = {n: threading.Event() for n, _, _ in self.stages}
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=stage,
                                          name=f"{name}-{stage[0]}", daemon=True)
                         for stage in self.stages]
        self._t0 = time.monotonic()

    def __contains__(self, name: str) -> bool:
        return name in self.status

    def on_ready(self, name: str, callback: Callable[[Any], None]) -> None:
        """Call ``callback(result)`` on the loop (in :meth:`apply`) once ``name`` is ready."""
        self._callbacks.setdefault(name, []).append(callback)

    def start(self) -> None:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def _run(self, name: str, load: Callable[[], Any], after: tuple[str, ...]) -> None:
        try:
            for need in after:
                self._events[need].wait()
                if self._stop.is_set():
                    return
                if need not in self.results:
                    raise RuntimeError(f"needs {need}, which did not load")
            value = load()
        except Exception as exc:  # one line in the log; the daemon goes on without it
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.status[name] = f"failed: {type(exc).__name__}" + (
                f": {first}" if first else "")
            log.error("%s did not load (%s); the daemon goes on without it", name,
                      self.status[name][len("failed: "):])
        else:
            self.results[name] = value
            self.seconds[name] = time.monotonic() - self._t0
            self.status[name] = "ready"
            log.info("%s ready after %.1f s", name, self.seconds[name])
        finally:
            self._events[name].set()
            self._finished.put(name)

    def apply(self) -> bool:
        """On the loop: hand what finished to its callbacks. True if something did."""
        worked = False
        while True:
            try:
                name = self._finished.get_nowait()
            except queue.Empty:
                return worked
            worked = True
            if name in self.results:
                for cb in self._callbacks.get(name, ()):
                    cb(self.results[name])

    def wait(self, name: str, timeout_s: float | None = None):
        """The stage's result once ready (any thread but the loop's); RuntimeError if it
        failed, the daemon is stopping, or ``timeout_s`` passed."""
        self._events[name].wait(timeout_s)
        if name in self.results:
            return self.results[name]
        if self._stop.is_set():
            raise RuntimeError(f"the daemon is stopping: no {name}")
        if self._events[name].is_set():
            raise RuntimeError(f"the {name} did not load ({self.status[name]})")
        raise RuntimeError(f"the {name} is still loading")

    def close(self) -> None:
        """Stop after the stage running now; wake whoever waits on a stage."""
        self._stop.set()
        for ev in self._events.values():
            ev.set()


class PendingClassifier:
    """The classifier's interface before its model is there: ``classes`` (the
    taxonomy's until the model says), and ``predict``, which waits for the model (on the
    daemon's classification thread) and then asks it."""

    def __init__(self, loader: Background, stage: str = "classifier"):
        self.loader, self.stage = loader, stage

    @property
    def classes(self):
        model = self.loader.results.get(self.stage)
        return tuple(model.classes) if model is not None else CLASSES

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None, radec=None,
                ref=None):
        return self.loader.wait(self.stage).predict(obj, mjd, band, mag, err, n_objects,
                                                    radec, ref)


class StartupCollector:
    """``sitian_startup_ready{part}``: 1 once a part loaded in the background is ready."""

    def __init__(self, loaders: list[Background]):
        self.loaders = loaders

    def collect(self):
        g = GaugeMetricFamily("sitian_startup_ready", "1 once a part the daemon loads "
                              "after its loop starts is ready (0 loading or failed)",
                              labels=["part"])
        for bg in self.loaders:
            for name, status in list(bg.status.items()):
                g.add_metric([name], 1.0 if status == "ready" else 0.0)
        yield g


def model_stages(config, hosting: str, model_dir: Path, policy=None, policy_seed: int = 0,
                 ray_address: str | None = None, api_port: int | None = None) -> list[Stage]:
    """The stages of ``brain run``'s models: ``policy`` only for a policy named (an
    object is used as it is); ``desk``, ``api`` and ``planner`` with hosting ``ray``
    unless ``api_port`` is 0."""
    stages: list[Stage] = []
    if hosting == "ray":
        stages += [("ray", lambda: start_ray(ray_address), ()),
                   ("classifier", lambda: start_classifier(str(model_dir)), ("ray",))]
        if isinstance(policy, str):
            stages.append(("policy", lambda: start_policy(policy, policy_seed), ("ray",)))
        if api_port != 0:
            stages += [("desk", _ready_desk, ("ray",)),
                       ("api", lambda: start_api(config, api_port, planner=False),
                        ("desk",)),
                       ("planner", lambda: start_planner(config), ("api",))]
    else:
        stages.append(("classifier", lambda: TransientClassifier.load(model_dir), ()))
        if isinstance(policy, str):
            stages.append(("policy", lambda: make_policy(policy, policy_seed), ()))
    return stages


def start_ray(address: str | None = None):
    """:func:`~brain.ops.hosting.connect` on a thread that lives as long as the process.
    A local Ray's own processes (GCS, raylet) are started with ``PR_SET_PDEATHSIG``,
    which kills them when the *thread* that started them ends: started on a stage's
    thread, they died with it, and every actor with them."""
    answer: queue.SimpleQueue = queue.SimpleQueue()

    def own() -> None:
        try:
            answer.put(connect(address))
        except BaseException as exc:  # handed to the stage, which reports it
            answer.put(exc)
            return
        threading.Event().wait()  # never set: the thread ends with the process

    threading.Thread(target=own, name="ray-owner", daemon=True).start()
    out = answer.get()
    if isinstance(out, BaseException):
        raise out
    return out


def _ready_desk():
    """The operator desk, once its actor answers (the loop asks it with a 2 s timeout)."""
    import ray  # lazy: heavy optional library

    handle = desk(create=True)
    ray.get(handle.planner_status.remote(), timeout=120)
    return handle
