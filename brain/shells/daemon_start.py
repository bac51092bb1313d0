"""Starting the daemon (brain run): the metrics port first, then the models (Ray actors or
in-process), the journal's world time for a restarted rehearsal, the night jobs'
ephemerides before the clock runs, alerts, night jobs and the operators' API."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from brain.config import BrainConfig
from brain.ops.alerts import AlertSink
from brain.ops.hosting import connect, start_classifier, start_policy
from brain.ops.nightjobs import NightJobs, current_classifier
from brain.ops.prometheus import MetricsServer
from brain.planner.api import desk, start_api
from brain.shells.daemon import Daemon
from brain.shells.journal import Journal
from drivers.clock import WorldClock
from policies.classifier import TransientClassifier
from policies.followup import make_policy

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


def run_daemon(config: BrainConfig, journal: str, start: float | None, speed: float,
               metrics_port: int, until: float | None = None, policy=None,
               router: str = "tcp://127.0.0.1:5550", pub: str = "tcp://127.0.0.1:5551",
               security: str = "none", keys_dir: str | None = None,
               hosting: str = "ray", ray_address: str | None = None,
               api_port: int | None = None, policy_seed: int = 0,
               failsafe_s: float = 60.0) -> Daemon:
    """``policy``: a policy name (``hosting="ray"``: served by a Ray actor) or object."""

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
    classifier = None
    # The classifier the night jobs promoted last (brain.ops.nightjobs), else the shipped one.

    model_dir = current_classifier(Path(journal).parent)
    if hosting == "ray":
        # The models as Ray actors (restarted by Ray; each holds nothing but its model),
        # on a local Ray or the cluster at ray_address.

        connect(ray_address)
        classifier = start_classifier(str(model_dir))
        if isinstance(policy, str):
            policy = start_policy(policy, policy_seed)
    else:
        classifier = TransientClassifier.load(model_dir)
        if isinstance(policy, str):
            policy = make_policy(policy, policy_seed)
    log.info("classifier from %s", model_dir)
    try:
        d = Daemon(config, journal, clock, router, pub, security, keys_dir, policy=policy,
                   classifier=classifier, registry=registry, failsafe_s=failsafe_s)
    except BaseException:
        if server is not None:
            server.close()
        raise
    d.metrics_server = server
    if hosting == "ray" and api_port != 0:
        d.attach_desk(desk(create=True))
        d.serve_desk()  # a first state before the API answers
        start_api(config, api_port)
        log.info("operators' API on http://127.0.0.1:%d (planner loading)",
                 api_port or config.planner.api_port)
    if start is not None:
        if config.ops.night_jobs:
            # The ephemerides the night jobs plan from take seconds: computed now, the
            # rehearsal's clock does not run through them (at 100x, 7 s of setup cost
            # the first 12 world minutes).

            for night in NightJobs.nights_for(config, begin):
                d.core.nights.get(night)
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
        d.nightjobs = NightJobs(d, Path(journal).parent)
        d.nightjobs.start()
    log.info("brain %s on %s, feed %s, world clock x%g from %s", d.link.session,
             d.link.router_endpoint, getattr(d.link, "pub_endpoint", "-"), speed,
             _iso(clock.now()))
    d.run(until=until)
    return d
