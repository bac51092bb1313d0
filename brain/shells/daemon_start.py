"""Starting the daemon (brain run), in this order: the metrics port; the journal's world
time for a restarted rehearsal; the core with tonight's ephemerides and the journal read
back; then the device link is bound and the loop starts at once, so the devices are
welcomed from then on. What is slow loads on background threads meanwhile
(:mod:`brain.shells.daemon_models`): the models (Ray, the classifier, the follow-up
policy, the operator desk and API, the planner) and tomorrow's ephemerides, after which
the night jobs start. Alerts start with the loop."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from brain.config import BrainConfig
from brain.ops.alerts import AlertSink
from brain.ops.nightjobs import NightJobs, current_classifier
from brain.ops.prometheus import MetricsServer
from brain.shells.daemon import Daemon
from brain.shells.daemon_models import (
    Background,
    PendingClassifier,
    Stage,
    StartupCollector,
    model_stages,
)
from brain.shells.daemon_web import web_parts
from brain.shells.journal import Journal
from drivers.clock import WorldClock

log = logging.getLogger("brain.shells.daemon")


class StartRefused(ValueError):
    """The daemon cannot start as asked (``--until`` already past); one line, for the
    operator."""


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def journal_world_time(journal: str | Path) -> tuple[float, float] | None:
    """An existing journal's last world time and the wall time it was last written, or
    None. Read before the daemon opens the journal: opening it moves the modification
    time that says when it was last written."""
    if not Path(journal).exists():
        return None
    j = Journal(journal)
    try:
        last, wall = j.last_world_time(), j.last_write_wall
    finally:
        j.close()
    return None if last is None or wall is None else (last, wall)


def run_daemon(*args, **kwargs) -> Daemon:
    """Start the daemon (:func:`start_daemon`, same arguments) and run its loop until
    ``until``, a signal, or ``.stopping``."""
    d = start_daemon(*args, **kwargs)
    d.run(until=d.until)
    return d


def start_daemon(config: BrainConfig, journal: str, start: float | None, speed: float,
                 metrics_port: int, until: float | None = None, policy=None,
                 router: str = "tcp://127.0.0.1:5550", pub: str = "tcp://127.0.0.1:5551",
                 security: str = "none", keys_dir: str | None = None,
                 hosting: str = "ray", ray_address: str | None = None,
                 api_port: int | None = None, policy_seed: int = 0,
                 failsafe_s: float = 60.0, stages: list[Stage] | None = None,
                 web_port: int | None = None, web_token: str | None = None) -> Daemon:
    """The daemon, its link bound and its background loading started: call ``run`` next,
    at once (the devices' HELLOs wait in the socket until it turns). ``policy``: a
    policy name (loaded in the background: by a Ray actor with ``hosting="ray"``) or an
    object. ``stages``: the models' background stages (default
    :func:`~brain.shells.daemon_models.model_stages`; tests: a model that loads slowly).
    ``web_port``/``web_token``: the operator page (:mod:`brain.shells.daemon_web`; default
    the config's ``ops.web_port``/``ops.web_token_file``)."""

    # metrics_port 0: no metrics at all (nothing collected, nothing served). The port is
    # taken first: a busy one stops the start before the journal or Ray is touched.
    registry = CollectorRegistry() if metrics_port else None
    server = None
    if metrics_port:
        try:
            server = MetricsServer(registry, metrics_port)
        except OSError as exc:
            raise OSError(f"--metrics-port {metrics_port}: {exc.strerror or exc}") from None
    # World time at the start. A rehearsal restarted on its journal goes on with its night,
    # not back at --start: world time kept running while the brain was down, as it would
    # have for real (the devices' clocks did), so it resumes at the journal's last world
    # time plus the wall time since its last write, times the speed (and the time this
    # start takes, added when the clock is set). A --until already past stops the start
    # here, in one line, before Ray, the models or the device link (docs/safety.md).
    t_decided = time.time()
    resumed = journal_world_time(journal) if start is not None else None
    begin = start if start is not None else t_decided
    if resumed is not None:
        last, wall = resumed
        resume = last + max(0.0, t_decided - wall) * speed
        if resume > start:
            begin = resume
        else:
            resumed = None
    if until is not None and until <= begin:
        if server is not None:
            server.close()
        raise StartRefused(f"--until {_iso(until)} is already past: world time starts at "
                           f"{_iso(begin)}" + (f" (the journal {journal} reaches "
                                               f"{_iso(resumed[0])})" if resumed else ""))
    if resumed is not None:
        log.warning("journal reaches %s: resuming at %s, not at --start", _iso(resumed[0]),
                    _iso(begin))
    # The loop waits on sockets without the GIL; when the classifier thread holds it, a
    # short switch interval gets an arriving DONE handled within a millisecond.
    sys.setswitchinterval(0.0002)
    clock = WorldClock(begin if start is not None else None, speed)
    # The classifier the night jobs promoted last (brain.ops.nightjobs), else the shipped
    # one; it and the policy load in the background, started once the link is bound (on
    # 2 cores, Ray's start would slow tonight's ephemerides, which the link waits for).
    model_dir = current_classifier(Path(journal).parent)
    if stages is None:
        stages = model_stages(config, hosting, model_dir, policy, policy_seed,
                              ray_address, api_port)
    models = Background("models", stages)
    pending_policy = "policy" in models
    try:
        d = Daemon(config, journal, clock, router, pub, security, keys_dir,
                   policy=None if pending_policy else policy,
                   classifier=PendingClassifier(models) if "classifier" in models else None,
                   registry=registry, failsafe_s=failsafe_s, policy_pending=pending_policy)
    except BaseException:
        if server is not None:
            server.close()
        raise
    d.metrics_server = server
    log.info("classifier from %s (loading: %s)", model_dir,
             ", ".join(models.status) or "nothing")
    if pending_policy:
        models.on_ready("policy", d.start_followup)
    if "desk" in models:
        models.on_ready("desk", lambda desk: (d.attach_desk(desk), d.serve_desk()))
    if "planner" in models:
        d.planner_status = lambda: models.status["planner"]
        models.on_ready("api", lambda _: log.info(
            "operators' API on http://127.0.0.1:%d (planner %s)",
            api_port or config.planner.api_port, models.status["planner"]))
    d.background.append(models)
    if start is not None:
        # A rehearsal's world time begins once the brain is ready: at --start, or where
        # the journal left it plus the whole time the brain was down, this start included.
        clock.sync(begin + (time.time() - t_decided) * speed if resumed else begin)
    if until is not None and clock.now() >= until:
        d.close()
        raise StartRefused(f"--until {_iso(until)} passed while the brain started (world "
                           f"time {_iso(clock.now())})")
    if config.ops.alerts:
        d.alerts = AlertSink(Path(journal).parent / "alerts", publish=d.link.publish,
                             role="test" if clock.simulated else "observation",
                             sites={s.id: s for s in config.sites})
    if config.ops.night_jobs:
        d.background.append(_night_jobs(d, Path(journal).parent))
    d.background += web_parts(d, web_port, web_token, hosting, (
        f"http://127.0.0.1:{api_port or config.planner.api_port}" if "planner" in models
        else None))
    if registry is not None:
        registry.register(StartupCollector(d.background))
    for bg in d.background:
        bg.start()
    log.info("brain %s on %s, feed %s, world clock x%g from %s", d.link.session,
             d.link.router_endpoint, getattr(d.link, "pub_endpoint", "-"), speed,
             _iso(clock.now()))
    d.until = until
    return d


def _night_jobs(d: Daemon, directory: Path) -> Background:
    """The night jobs, started on the loop once the ephemerides of the nights they plan
    (tonight's and tomorrow's: seconds each) are computed off it."""
    nights = d.core.nights
    wanted = [n for n in NightJobs.nights_for(d.config, d.clock.now()) if n not in nights]

    def start(entries) -> None:
        for night, entry in entries:
            if night not in nights:
                nights.put(night, entry)
        d.nightjobs = NightJobs(d, directory)
        d.nightjobs.start()

    bg = Background("night-jobs", [("night_jobs", lambda: [(n, nights.compute(n))
                                                           for n in wanted], ())])
    bg.on_ready("night_jobs", start)
    return bg
