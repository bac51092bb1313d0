"""The daemon shell (``brain run``): the brain core on a clock, behind SBP1.

Same core as the fast shell (docs/architecture.md: no second scheduler); what differs is
around it. Devices come and go over ZeroMQ (:class:`drivers.link.BrainLink`); the core
schedules only groups whose three telescopes are up. Every command is journalled before
it is sent and every device event before the core acts on it (:class:`Journal`). Each
command passes :meth:`BrainCore.guard` last: a refusal names its rule, is journalled and
counted (``sitian_safety_vetoes_total{rule}``), and comes back to the core as ``FAILED
unsafe``. Safety is reviewed every ``SAFETY_EVERY_S`` of world time as well as on each
weather report, and the clock ticks each minute of world time as in the fast shell.

The device link is bound last, once the core has tonight's ephemerides and the journal
is read back, so the loop answers a HELLO from the moment the router listens; the models
load in the background meanwhile (:mod:`brain.shells.daemon_models`). With
``policy_pending`` follow-up is held, its state restored, until :meth:`start_followup`.

On start the daemon recovers the journal: commands left in flight are marked ``unknown``
(non-idempotent, never resent) or ``lost``; the scheduler's visits, the detections and the
exposure counter are read back, so the night continues where it stopped. It comes up
safe: every site starts closed and opens only on fresh, safe weather.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from brain.config import BrainConfig
from brain.core.association import DetectionBatch
from brain.core.braincore import BrainCore
from brain.core.events import (
    Command,
    DetectionsEvent,
    DeviceState,
    Done,
    Failed,
    Operator,
    Tick,
    Weather,
    set_command_prefix,
)
from brain.core.followup import FollowupManager
from brain.core.store import open_store
from brain.ops.alerts import classification_alerts, followup_alert
from brain.ops.prometheus import DaemonMetrics
from brain.planner.tools import TOOLS, Validator, parse_call
from brain.shells.daemon_store import NightStore
from brain.shells.journal import Journal
from drivers.clock import WorldClock
from drivers.link import (
    BrainLink,
    CommandDone,
    CommandFailed,
    DeviceDown,
    DeviceEvent,
    DeviceSpec,
    DeviceUp,
    LateReply,
)
from drivers.protocol import weather_values
from observatory.ephemeris import night_date
from observatory.taxonomy import TRANSIENTS
from observatory.times import unix_to_mjd
from observatory.visibility import airmass

log = logging.getLogger("brain.shells.daemon")
RESTORE_VISITS_S = 2 * 86400.0  # the survey's cadence state: the last two days' visits

TICK_S = 60.0
SAFETY_EVERY_S = 5.0
ALERTS_PER_TURN = 10
FOLLOWUP_TOOLS = ("request_followup", "cancel_followup")


def device_specs(config: BrainConfig) -> dict[str, DeviceSpec]:
    """Every device the configuration knows (docs/contracts.md ids)."""
    specs = {}
    for g in config.groups:
        for b in config.camera.bands:
            specs[g.telescope(b)] = DeviceSpec("telescope", g.site, g.number, b)
    for s in config.sites:
        specs[f"{s.id}.wx"] = DeviceSpec("weather", s.id)
    for sp in config.spectrographs:
        specs[f"{sp.site}.spec"] = DeviceSpec("spectrograph", sp.site)
    return specs


class Daemon(NightStore):
    def __init__(self, config: BrainConfig, journal: str | Path, clock: WorldClock | None = None,
                 router: str = "tcp://127.0.0.1:5550", pub: str | None = "tcp://127.0.0.1:5551",
                 security: str = "none", keys_dir: str | None = None, policy=None,
                 classifier=None, registry=None, heartbeat_s: float = 1.0,
                 failsafe_s: float = 60.0, seed: int = 0, policy_pending: bool = False):
        self.config = config
        self.clock = clock or WorldClock()
        self.registry = registry
        session = os.urandom(8).hex()
        set_command_prefix(f"{session[:8]}-")
        followup = None
        if (policy is not None or policy_pending) and config.spectrographs:
            followup = FollowupManager(config, policy, seed)
            # The journal is the daemon's record: a recorded stream (the fast shell's,
            # for replay) would keep every snapshot in memory all season.
            followup.record = False
        # The object store: beside the journal unless the config names one (docs/store.md).
        self.store = open_store(config.store.url or
                                f"sqlite:///{Path(journal).parent / 'store.sqlite'}")
        self.core = BrainCore(config, classifier=classifier, followup=followup,
                              require_devices=True, store=self.store)
        self.core.on_flush = self._on_flush
        self.core.on_visit = self._on_visit
        # device -> the core's group index (the metrics' shutter windows are per group)
        self._group_index = {d: g.index for g in self.core.groups for d in g.devices}
        self.core.ensure_night(self.clock.now())  # ephemerides before the loop starts
        _ = self.core.classifier  # and the model: loading it mid-night stalls the loop
        # Classification (half-hourly, up to a second of CPU) runs on a worker thread so
        # device outcomes keep being answered; its answer is applied on the loop.
        self._classifying: list[tuple[float, Future]] = []
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="classify")
        self.core.offload = lambda t, job: self._classifying.append(
            (t, self._pool.submit(job)))
        self.journal = Journal(journal)
        self.recovered = self.journal.start_session(session, self.clock.now())
        self._restore()
        # Follow-up whose policy is still loading: restored, then held off the core.
        self._held_followup = None
        if policy_pending and followup is not None:
            self._held_followup, self.core.followup = followup, None
        self._next_tick = -math.inf
        self._next_safety = -math.inf
        self._cmds: dict[str, Command] = {}  # in flight, for journalling the results
        self._outbox: list[tuple[Command, float]] = []  # decided, not yet journalled/sent
        self.stopping = False
        self._run_wall0: float | None = None
        # Operators (brain.planner.api): the planner's state goes to the desk actor, approved
        # actions come back from it.
        self.desk = None
        self._next_desk = 0.0
        self._next_push = 0.0
        self._validator = None
        self.nightjobs = None  # brain.ops.nightjobs.NightJobs, started by run_daemon
        self.alerts = None  # brain.ops.alerts.AlertSink
        self.metrics_server = None  # brain.ops.prometheus.MetricsServer, started by run_daemon
        self._alert_queue: deque = deque()
        self.background: list = []  # brain.shells.daemon_models.Background, by run_daemon
        self.planner_status = None  # callable: the planner's status, pushed to the desk
        # The device link last (see the module's docstring).
        try:
            self.link = BrainLink(device_specs(config), router, pub, self.clock,
                                  heartbeat_s, failsafe_s, security, keys_dir, registry,
                                  session=session)
        except BaseException:
            self.journal.close()
            raise
        self.metrics = None
        if registry is not None:
            self.metrics = DaemonMetrics(registry, self)

    # Recovery --------------------------------------------------------------------
    def _restore(self) -> None:
        j, core = self.journal, self.core
        now = self.clock.now()
        # The catalogue and the active window from the store, then the detection messages
        # journalled since its last write: nothing older (restart time is flat).
        self.loaded = core.associator.load(self.config.transients.min_detections,
                                           float(unix_to_mjd(now)))
        after = int(self.store.get_meta("journal_detections") or -1)
        batches = [self._batch(arr) for _o, _p, _t, arr in j.iter_detections(after)]
        batches = [b for b in batches if len(b)]
        core.restore(j.visits(since=now - RESTORE_VISITS_S), j.max_obs_seq(),
                     DetectionBatch.concat(batches) if batches else None)
        n_taken = 0
        spectra = j.spectra()
        if core.followup is not None and spectra:
            for sp in spectra:
                sp["night"] = night_date(self.config, sp["t_sent"])
            rows = core.associator.locate([sp["ra_deg"] for sp in spectra],
                                          [sp["dec_deg"] for sp in spectra])
            # An empty catalogue (a new store beside an old journal) knows none of them.
            ids = core.associator.ids
            oids = (np.where(rows >= 0, ids[np.maximum(rows, 0)], -1) if ids.size
                    else np.full(len(spectra), -1))
            n_taken = core.followup.restore(spectra, oids,
                                            night_date(self.config, self.clock.now()))
        n_ops = 0
        for t, tool, args in j.operator_actions():
            # The operator's standing orders (held sites, paused groups, the region,
            # follow-up requests) outlive a restart; the commands they gave were sent.
            try:
                core.handle(Operator(t, tool, args))
                n_ops += 1
            except ValueError as exc:
                log.warning("journalled operator action %s not restored: %s", tool, exc)
        if n_ops:
            log.warning("restored %d operator actions from the journal", n_ops)
        if any(self.recovered.values()) or batches:
            log.warning("journal recovered: %s; %d visits, %d detection messages, "
                        "%d spectra (%d objects taken)", self.recovered, len(j.visits()),
                        len(batches), len(spectra), n_taken)

    # Loop ------------------------------------------------------------------------
    def run(self, until: float | None = None, max_wall_s: float | None = None) -> None:
        """Serve until world time ``until``, ``max_wall_s`` of wall time, or a signal."""
        t_wall0 = self._run_wall0 = time.monotonic()
        self._run_cpu0 = time.process_time()
        self.journal.session_loop_started(self.link.session, self.clock.now())
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, lambda *_: setattr(self, "stopping", True))
            except ValueError:  # not the main thread (tests): stop via .stopping
                pass
        try:
            while not self.stopping:
                now = self.clock.now()
                if until is not None and now >= until:
                    break
                if max_wall_s is not None and time.monotonic() - t_wall0 > max_wall_s:
                    break
                self.step()
        finally:
            self.close()

    def step(self) -> None:
        """One turn of the loop. Latency matters (a rehearsal at 100x turns each
        millisecond into 0.1 s of telescope time), so: device outcomes and state first,
        their commands journalled in one transaction and sent; then the safety review
        and the minute tick; detections last (they wait for the next tick anyway)."""
        turn0 = time.perf_counter()
        now = self.clock.now()
        wait_world = min(self._next_tick, self._next_safety) - now
        timeout_ms = int(np.clip(self.clock.wall_s(wait_world) * 1e3, 0, 20))
        detections = []
        with self.journal.transaction():
            events = self.link.poll(timeout_ms)
            busy = bool(events)
            for ev in events:
                if isinstance(ev, DeviceEvent) and ev.name == "detections":
                    detections.append(ev)
                else:
                    self._on_link(ev)
        self.flush()
        now = self.clock.now()
        if now >= self._next_safety:
            busy = True
            self._next_safety = now + SAFETY_EVERY_S
            self.send(self.core.review_safety(now), now)
            self.flush()
        if now >= self._next_tick:
            busy = True
            self._next_tick = now + TICK_S
            with self.journal.transaction():  # the visits it schedules
                self.send(self.core.handle(Tick(now)), now)
            self.flush()
        if detections:
            with self.journal.transaction():
                for ev in detections:
                    self._on_event(ev)
        if self.nightjobs is not None and self.nightjobs.step():
            busy = True
        if self._alert_queue and self._drain_alerts():
            busy = True
        for bg in self.background:  # models and night jobs that finished loading
            busy = bg.apply() or busy
        if self.desk is not None and time.monotonic() >= self._next_desk:
            self.serve_desk()
        while self._classifying and self._classifying[0][1].done():
            t_asked, fut = self._classifying.pop(0)
            try:
                cand, prob = fut.result()
            except Exception as e:  # a broken model must not take the night down
                log.error("classification asked at %.0f failed: %s: %s", t_asked,
                          type(e).__name__, e)
                continue
            before = self._predicted(cand)
            self.core.finish_classification(self.clock.now(), cand, prob)
            if self.alerts is not None:
                self._alert_classified(self.clock.now(), cand, prob, before)
            if self.metrics is not None:
                self.metrics.classified(prob)
        if self.metrics is not None and busy:  # the turn, less the wait for the sockets
            self.metrics.loop_lag.observe(max(0.0, time.perf_counter() - turn0
                                              - self.link.last_wait_s))

    def start_followup(self, policy) -> None:
        """Follow-up starts: its policy has loaded. The manager held since the start
        takes it, with the candidates classified so far."""
        fu, self._held_followup = self._held_followup, None
        if fu is None:
            return
        fu.policy = policy
        self.core.followup = fu
        if self.core.obj_prob.size:  # else the first classification gives the snapshot
            self.core.finish_classification(self.clock.now(), np.zeros(0, dtype=np.int64),
                                            np.zeros((0, self.core.obj_prob.shape[1])))
        log.info("follow-up started (policy %s)", getattr(policy, "name", type(policy)))

    # Operators -------------------------------------------------------------------
    def attach_desk(self, desk) -> None:
        self.desk = desk

    def operator_action(self, tool: str, args, state, request: str | None = None) -> list:
        """Apply one approved operator action (the Ray desk's or the web page's, on the
        loop): validated again against ``state`` (the plan was made on an older one;
        ``request``: the operator's words, for a plan's action), journalled and sent. The
        problems ([] when done); a refusal is journalled and changes nothing."""
        now = self.clock.now()
        if self._validator is None:
            self._validator = Validator(self.config, self.core.nights)
        parsed, err = parse_call(tool, args) if isinstance(args, dict) else (
            None, "args must be an object")
        problems = ([err] if err else [f"{tool} is not an action"]
                    if not TOOLS[tool].moves_hardware else
                    ["follow-up has not started: its policy is still loading"]
                    if self._held_followup is not None and tool in FOLLOWUP_TOOLS else
                    self._validator.check(tool, parsed, state, request))
        if not problems:
            args = parsed.model_dump()
            try:
                with self.journal.transaction():
                    self.send(self.core.handle(Operator(now, tool, args)), now)
                    self.journal.event(now, "operator", tool, args)
            except ValueError as exc:
                problems = [str(exc)]
        if problems:
            with self.journal.transaction():
                self.journal.event(now, "operator", "refused",
                                   {"tool": tool, "args": args, "problems": problems})
            return problems
        self.flush()
        if self.metrics is not None:
            self.metrics.actions.inc(tool)
        log.info("operator: %s %s", tool, args)
        return []

    def serve_desk(self) -> None:
        """Take approved actions from the Ray desk (:meth:`operator_action`) and push a
        fresh state."""
        import ray  # lazy: heavy optional library

        wall = time.monotonic()
        self._next_desk = wall + 0.25
        try:
            actions = ray.get(self.desk.take.remote(), timeout=2.0)
        except Exception as exc:  # the desk restarting: try again on the next turn
            log.warning("operator desk unavailable: %s", type(exc).__name__)
            return
        state = (self.core.plan_state(self.clock.now()) if actions or wall >= self._next_push
                 else None)
        for aid, tool, args in actions:
            self.desk.done.remote(aid, "; ".join(self.operator_action(tool, args, state))
                                  or None)
        if actions:
            state = self.core.plan_state(self.clock.now())
        if state is not None:
            self._next_push = wall + 2.0
            self.desk.put_state.remote(state.to_dict(), self.planner_status and
                                       self.planner_status())

    # Alerts (brain.ops.alerts) ----------------------------------------------------------
    def _predicted(self, cand: np.ndarray) -> np.ndarray:
        """The objects' predicted class index before a new answer (-1: none yet)."""
        prob = self.core.obj_prob
        out = np.full(len(cand), -1)
        known = cand < prob.shape[0]
        if known.any() and prob.shape[1]:
            rows = prob[cand[known]]
            out[known] = np.where(rows.sum(axis=1) > 0, rows.argmax(axis=1), -1)
        return out

    def _alert_classified(self, t: float, cand: np.ndarray, prob: np.ndarray,
                          before: np.ndarray) -> None:
        """Announce the objects whose predicted class is new (first classification or a
        change), likely enough, and (by default) a transient class."""

        if not len(cand):
            return
        ops = self.config.ops
        classes = list(self.core.classifier.classes)
        pred = prob.argmax(axis=1)
        keep = (pred != before) & (prob[np.arange(len(cand)), pred] >=
                                   ops.alert_min_probability)
        if ops.alert_transients_only:
            keep &= np.isin(np.asarray(classes)[pred], TRANSIENTS)
        if not keep.any():
            return
        self._alert_queue.extend(classification_alerts(t, cand[keep], prob[keep], classes,
                                                       self.core.associator))

    def _drain_alerts(self) -> bool:
        """Emit up to ``ALERTS_PER_TURN`` queued alerts (about 1 ms each: a night's first
        classification can announce thousands, which must not stall the loop)."""
        n = min(len(self._alert_queue), ALERTS_PER_TURN)
        for _ in range(n):
            self._emit(self._alert_queue.popleft())
        return n > 0

    def _alert_followup(self, cmd: Command) -> None:
        rec = self.core.followup.records.get(cmd.args.get("target_id"))
        if rec is None:
            return
        try:
            alert = followup_alert(cmd, rec)
        except ValueError as exc:
            log.error("follow-up alert for %s not made: %s", cmd.args.get("target_id"), exc)
            return
        self._emit(alert)

    def _emit(self, alert) -> None:
        ok = self.alerts.emit(alert) is not None
        if self.metrics is not None:
            self.metrics.alerts.inc(alert.kind, "emitted" if ok else "failed")

    def close(self) -> None:
        if self._run_wall0 is not None:
            wall = time.monotonic() - self._run_wall0
            self.journal.end_session(self.link.session, wall)
            log.info("session %s: loop ran %.1f s wall, %.2f s CPU", self.link.session,
                     wall, time.process_time() - self._run_cpu0)
            if self.metrics_server is not None:
                log.info("session %s: /metrics answered %d scrapes in %.3f s CPU",
                         self.link.session, self.metrics_server.scrapes,
                         self.metrics_server.cpu_s)
        for bg in self.background:  # a classification waiting for its model gives up
            bg.close()
        if self.nightjobs is not None:
            self.nightjobs.close()
        # Everything associated so far goes to the store: a restart replays nothing.
        self.core.flush_store()
        self._on_flush(self.clock.now())
        self.store.close()
        if self.alerts is not None:
            while self._drain_alerts():  # what was announced internally goes out
                pass
            self.alerts.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.link.close()
        self.journal.close()

    # Link events -----------------------------------------------------------------
    def _on_link(self, ev) -> None:
        j, core = self.journal, self.core
        if isinstance(ev, DeviceUp):
            j.event(ev.t, ev.device, "up", ev.state)
            self.send(core.handle(DeviceState(ev.t, ev.device, True)), ev.t)
        elif isinstance(ev, DeviceDown):
            j.event(ev.t, ev.device, "down", {"reason": ev.reason})
            self.send(core.handle(DeviceState(ev.t, ev.device, False)), ev.t)
        elif isinstance(ev, CommandDone):
            cmd = self._cmds.pop(ev.cmd_id, None)
            # The observation first: killed in between, the command stays 'sent', becomes
            # 'unknown' on restart and the device's replay fills in (INSERT OR IGNORE).
            if cmd is not None and cmd.name == "expose":
                self._journal_observation(cmd, ev.result)
            j.finish(ev.cmd_id, "done", ev.t, ev.result)
            if cmd is not None and cmd.name == "spectrum":
                j.followup(ev.cmd_id, cmd.args.get("target_id"), cmd.device, "done", ev.result)
                if self.metrics is not None:
                    self.metrics.spectrum("done", ev.result.get("label"),
                                          bool(ev.result.get("before_peak", False)))
            self.send(core.handle(Done(ev.t, ev.device, ev.cmd_id, ev.result)), ev.t)
        elif isinstance(ev, CommandFailed):
            self._failed(ev.t, ev.device, ev.cmd_id, ev.code, ev.message)
        elif isinstance(ev, DeviceEvent):
            self._on_event(ev)
        elif isinstance(ev, LateReply):
            row = j.reconcile(ev.cmd_id, ev.ok, ev.t, ev.body)
            if row is not None and ev.ok and row["name"] == "expose":
                cmd = Command(row["device"], "expose", json.loads(row["args"]), ev.cmd_id)
                self._journal_observation(cmd, ev.body["result"])

    def _failed(self, t, device, cmd_id, code, message) -> None:
        cmd = self._cmds.pop(cmd_id, None)
        status = ("unknown" if code == "unknown" or (code == "timeout" and cmd is not None
                                                      and not cmd.idempotent) else
                  "timeout" if code == "timeout" else "failed")
        self.journal.finish(cmd_id, status, t, code=code, message=message)
        if self.metrics is not None and cmd is not None and cmd.name == "spectrum":
            self.metrics.spectrum("failed")
        self.send(self.core.handle(Failed(t, device, cmd_id, code, message)), t)

    def _on_event(self, ev: DeviceEvent) -> None:
        now = self.clock.now()
        if ev.name == "weather":
            site = ev.device.split(".", 1)[0]
            self.journal.event(ev.t, ev.device, ev.name, ev.data)
            w = Weather(min(ev.t, now), site, **weather_values(ev.data))
            self.send(self.core.handle(w), now)
        elif ev.name == "detections":
            arrays = self._arrays(ev.data)
            if self.journal.detections(ev.data["obs_id"], int(ev.data.get("part", 0)), ev.t,
                                       arrays):
                self.core.handle(DetectionsEvent(now, self._batch(arrays)))
        else:  # state, fault and extensions: journalled for the operators
            self.journal.event(ev.t, ev.device, ev.name, ev.data)
            if ev.name == "fault":
                log.warning("%s fault %s: %s", ev.device, ev.data.get("code"),
                            ev.data.get("message"))

    def _journal_observation(self, cmd: Command, result: dict) -> None:
        core = self.core
        spec = self.link.peers[cmd.device].spec
        f = int(cmd.args["field_id"])
        t0, t1 = float(result.get("t_start", 0)), float(result.get("t_end", 0))
        t_mid = 0.5 * (t0 + t1)
        idx = np.array([f])
        try:
            alt = float(core.sky.alt_deg(spec.site, t_mid, idx)[0])
            moon = float(core.sky.moon_sep_deg(spec.site, t_mid, idx)[0])
            sun = float(core.sky.night.sites[spec.site].sun_alt(t_mid))
        except Exception:  # an exposure from another night's cache: geometry unknown
            alt = moon = sun = float("nan")

        self.journal.observation((
            str(result.get("obs_id", cmd.args["obs_id"])), cmd.device, spec.site,
            int(spec.group), spec.band, f, float(core.grid.ra_deg[f]),
            float(core.grid.dec_deg[f]), t0, t1, alt, float(airmass(alt)), moon, sun,
            float(result.get("limiting_mag", float("nan")))))
        if self.metrics is not None:
            self.metrics.exposure(spec.band, self._group_index[cmd.device], t0, t1)

    def _on_visit(self, field_id: int, group: int, t_start: float) -> None:
        self.journal.visit(int(field_id), int(group), float(t_start))
        if self.metrics is not None:
            self.metrics.visit(int(field_id), float(t_start))

    # Commands --------------------------------------------------------------------
    def send(self, cmds: list[Command], t: float) -> None:
        """Queue commands; :meth:`flush` journals and sends them."""
        self._outbox += [(cmd, t) for cmd in cmds]

    def flush(self) -> None:
        """Send the queued commands: each passes the safety guard last, all are
        journalled and committed in one transaction, then sent. A refusal or a failed
        send goes back to the core, whose new commands go round again."""
        while self._outbox:
            batch, self._outbox = self._outbox, []
            ready = []
            with self.journal.transaction():
                for cmd, t in batch:
                    rule = self.core.guard(cmd, t)
                    if rule is not None:
                        self.journal.refused(self.link.session, cmd, t, rule)
                        if self.metrics is not None:
                            self.metrics.vetoes.inc(rule)
                        self.send(self.core.refuse(cmd, t, rule), t)
                        continue
                    self.journal.command(self.link.session, cmd, t)
                    ready.append((cmd, t))
                    if self.metrics is not None and cmd.name == "spectrum":
                        self.metrics.spectrum("sent")
            failed = []
            for cmd, t in ready:
                self._cmds[cmd.cmd_id] = cmd
                fail = self.link.send_command(cmd.device, cmd.cmd_id, cmd.name, cmd.args,
                                              cmd.deadline, cmd.idempotent)
                if fail is not None:
                    self._cmds.pop(cmd.cmd_id, None)
                    failed.append((cmd, t, fail))
                elif (cmd.name == "spectrum" and self.alerts is not None
                      and self.core.followup is not None):
                    self._alert_followup(cmd)  # the trigger, once it is on its way
            if failed:
                with self.journal.transaction():
                    for cmd, t, fail in failed:
                        self.journal.finish(cmd.cmd_id, "failed", t, code=fail.code,
                                            message=fail.message)
                        self.send(self.core.handle(Failed(t, cmd.device, cmd.cmd_id,
                                                           fail.code, fail.message)), t)
