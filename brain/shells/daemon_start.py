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
from drivers.clock import WorldClock
from policies.classifier import TransientClassifier
from policies.followup import make_policy

log = logging.getLogger("brain.shells.daemon")


def run_daemon(config: BrainConfig, journal: str, start: float | None, speed: float,
               metrics_port: int, until: float | None = None, policy=None,
               router: str = "tcp://127.0.0.1:5550", pub: str = "tcp://127.0.0.1:5551",
               security: str = "none", keys_dir: str | None = None,
               hosting: str = "ray", ray_address: str | None = None,
               api_port: int | None = None, policy_seed: int = 0) -> Daemon:
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
    # The loop waits on sockets without the GIL; when the classifier thread holds it, a
    # short switch interval gets an arriving DONE handled within a millisecond.
    sys.setswitchinterval(0.0002)
    clock = WorldClock(start, speed)
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
                   classifier=classifier, registry=registry)
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
        # A rehearsal restarted on its journal goes on with its night, not back at
        # --start: world time kept running while the brain was down, as it would have
        # for real (the devices' clocks did), so it resumes at the journal's last world
        # time plus the wall time since its last write, times the speed.
        last = d.journal.last_world_time()
        if last is not None and d.journal.last_write_wall is not None:
            resume = last + max(0.0, time.time() - d.journal.last_write_wall) * speed
            if resume > start:
                log.warning("journal reaches %s: resuming at %s, not at --start",
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resume)))
                start = resume
        if config.ops.night_jobs:
            # The ephemerides the night jobs plan from take seconds: computed now, the
            # rehearsal's clock does not run through them (at 100x, 7 s of setup cost
            # the first 12 world minutes).

            for night in NightJobs.nights_for(config, start):
                d.core.nights.get(night)
        clock.sync(start)  # a rehearsal's world time begins once the brain is ready
    if config.ops.alerts:
        d.alerts = AlertSink(Path(journal).parent / "alerts", publish=d.link.publish,
                             role="test" if clock.simulated else "observation",
                             sites={s.id: s for s in config.sites})
    if config.ops.night_jobs:
        d.nightjobs = NightJobs(d, Path(journal).parent)
        d.nightjobs.start()
    log.info("brain %s on %s, feed %s, world clock x%g from %s", d.link.session,
             d.link.router_endpoint, getattr(d.link, "pub_endpoint", "-"), speed,
             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now())))
    d.run(until=until)
    return d
