"""What the daemon loads while it already serves the array (issue 19: the telescopes never
wait for a model).

``run_daemon`` binds the device link and starts its loop as soon as the core has
tonight's ephemerides and the journal is read back; a device's HELLO is answered from
then on. What is slow and not needed to run the survey loads meanwhile, each on a
:class:`Background` thread of stages, which the loop takes up as they finish (on its own
thread, between two turns):

* ``models`` (in this order): ``classifier`` (hosting ``ray``: Ray is started or joined
  first, then the classifier actor), ``policy`` (the follow-up policy; follow-up is held
  until it is ready), ``desk`` (the operator desk: the daemon pushes its state there),
  ``api`` (the operators' HTTP API; it answers, and says the planner is loading) and
  ``planner`` (the vLLM engine, about a minute on 2 cores);
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

Stage = tuple[str, Callable[[], Any]]


class Background:
    """Stages run one after the other on a thread of their own; each result is handed to
    the loop by :meth:`apply` (its ``on_ready`` callbacks run there, not on this thread).

    ``status[name]``: ``loading``, ``ready`` or ``failed: <one line>``."""

    def __init__(self, name: str, stages: list[Stage]):
        self.name = name
        self.stages = list(stages)
        self.status = {n: "loading" for n, _ in self.stages}
        self.results: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}  # from start() to ready
        self._events = {n: threading.Event() for n, _ in self.stages}
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._t0 = time.monotonic()

    def __contains__(self, name: str) -> bool:
        return name in self.status

    def on_ready(self, name: str, callback: Callable[[Any], None]) -> None:
        """Call ``callback(result)`` on the loop (in :meth:`apply`) once ``name`` is ready."""
        self._callbacks.setdefault(name, []).append(callback)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        for name, load in self.stages:
            if self._stop.is_set():
                break
            try:
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

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None):
        return self.loader.wait(self.stage).predict(obj, mjd, band, mag, err, n_objects)


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
        stages.append(("classifier", lambda: (connect(ray_address),
                                              start_classifier(str(model_dir)))[1]))
        if isinstance(policy, str):
            stages.append(("policy", lambda: start_policy(policy, policy_seed)))
        if api_port != 0:
            stages += [("desk", lambda: desk(create=True)),
                       ("api", lambda: start_api(config, api_port, planner=False)),
                       ("planner", lambda: start_planner(config))]
    else:
        stages.append(("classifier", lambda: TransientClassifier.load(model_dir)))
        if isinstance(policy, str):
            stages.append(("policy", lambda: make_policy(policy, policy_seed)))
    return stages
