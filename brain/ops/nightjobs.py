"""The daemon's night jobs: APScheduler with a persistent job store.

Each night has, per site, a **dusk** job (at the start of the site's astronomical night:
ephemerides for the night, then the site opens if its weather is safe) and a **dawn** job
(``ops.dawn_margin_s`` after it ends: every telescope of the site closed and parked, and
the site's summary journalled); then, once every site is past dawn, a **report** job
(the night's files and report.html, from the journal and the core, in
``<state>/nights/<date>/``) and a **retrain** job (the classifier retrained with the
store's spectroscopic labels; the data flywheel).

How they run:

* APScheduler (``BackgroundScheduler``) keeps the jobs in ``jobs.sqlite`` beside the
  journal (``SQLAlchemyJobStore``) and wakes them; a job only hands itself to the daemon's
  loop (:func:`fire`), which runs it between device events. The core is single-threaded
  and never touched from the scheduler's thread.
* Times are world times (a rehearsal's clock runs ``--speed`` times real time and is
  re-synchronised on a restart); each stored job keeps its world time and is put back on
  the current clock when the daemon starts. World time may have jumped meanwhile (a
  journal a month later, a fresh ``--start`` earlier): a stored job the journal has
  recorded is dropped, one more than a day late is judged missed at once, and a future
  one for a night other than tonight or tomorrow is dropped and planned again on its
  night (docs/safety.md).
* Once: every job has an id per night (``dusk:2026-12-15:xl``). The journal's
  ``night_jobs`` table records it in the same transaction as the commands it sent; a
  job found there is never run again, whether APScheduler fires it twice, the daemon
  restarts, or the plan is made again. A report or retrain that was running when the
  daemon stopped is run again on start (they rewrite their own files).
* Misfires are judged in world time when the loop takes the job: a dusk job is still
  worth running until the site's night ends, a dawn job always runs (closing is safe),
  a report within 12 h, a retrain within ``ops.retrain_grace_h``; a job later than that
  is journalled as ``missed`` and counted. APScheduler itself coalesces and never runs
  two instances of a job.
* A report (a thread) and a retraining (a niced process) run aside, one at a time;
  dusk and dawn never wait for them (a retraining lasts minutes: hours of world time
  in a fast rehearsal). The night is closed in the store once, at its last dawn.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING

from brain.ops.nightfiles import gather, write_night
from observatory.ephemeris import night_date, night_span
from policies.classifier import ARTIFACT_DIR, TransientClassifier

log = logging.getLogger("brain.ops.nightjobs")

KINDS = ("dusk", "dawn", "report", "retrain")
# Run aside (a thread, a process), one at a time; dusk and dawn never wait for them.
BACKGROUND_JOBS = ("report", "retrain")
REPORT_GRACE_S = 12 * 3600.0
DAWN_GRACE_S = 12 * 3600.0
MAX_GRACE_S = 24 * 3600.0  # no job is worth running later (dusk: its night; retrain: <= 24 h)

_ACTIVE: NightJobs | None = None  # the daemon's, for fire() (one daemon per process)


def fire(job_id: str, kind: str, night: str, site: str | None, world_t: float) -> None:
    """APScheduler's job function: hands the job to the daemon's loop. Module level, so
    the persistent store can name it."""
    jobs = _ACTIVE
    if jobs is None:
        log.error("night job %s fired with no daemon running", job_id)
        return
    jobs.due.put(Due(job_id, kind, night, site, float(world_t)))


class _Scheduler(BackgroundScheduler):
    """APScheduler's, less a race at shutdown: its thread, woken by ``shutdown``, goes on
    to submit due jobs to the executors shutdown just closed (and dies on it). Here a
    round of due jobs starts only while running, checked under the lock that
    ``shutdown`` takes."""

    def _process_jobs(self):
        with self._jobstores_lock:
            if self.state != STATE_RUNNING:
                return None
            return super()._process_jobs()

    def shutdown(self, wait=True):
        """A round of due jobs in progress ends first. APScheduler marks itself stopped
        before it takes the lock, and a round that then removes a fired job looks for it
        among the jobs pending a start instead (JobLookupError in its thread). Paused, no
        round begins; taking the lock waits for the one under way."""
        if self.state == STATE_RUNNING:
            self.pause()
        with self._jobstores_lock:
            pass
        super().shutdown(wait)


@dataclass(frozen=True)
class Due:
    job_id: str
    kind: str
    night: str
    site: str | None
    world_t: float


class NightJobs:
    def __init__(self, daemon, state_dir: Path):
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job
        self.d = daemon
        self.config = daemon.config
        self.ops = daemon.config.ops
        self.clock = daemon.clock
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.due: queue.SimpleQueue[Due] = queue.SimpleQueue()
        self.scheduler = _Scheduler(
            jobstores={"default": SQLAlchemyJobStore(
                url=f"sqlite:///{self.state_dir / 'jobs.sqlite'}")},
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC)
        self._busy: tuple[Due, object] | None = None  # a report thread or retrain process
        self._planned_for: str | None = None
        self._closed_night: str | None = None  # the night the last dawn closed in the store
        self.counts: dict[tuple[str, str], int] = {}
        # Fired by the wall clock a little before the world clock reaches them (the two
        # clocks are read apart; the wall clock can be stepped): held until it does.
        self._early: list[Due] = []
        # Reports and retrainings due while another one runs, in the order they fell due.
        self._waiting: list[Due] = []

    # Scheduling ----------------------------------------------------------------------
    def start(self) -> None:
        global _ACTIVE
        _ACTIVE = self
        self.scheduler.start(paused=True)
        n = self._restore(self.clock.now())
        for job_id, kind, night, site, world_t in self.d.journal.jobs_with_status("started"):
            log.warning("night job %s was running when the daemon stopped: running it again",
                        job_id)
            self.due.put(Due(job_id, kind, night, site, world_t))
        self.plan(self.clock.now())
        self.scheduler.resume()
        log.info("night jobs: %d kept from the job store, %d scheduled now", n,
                 len(self.scheduler.get_jobs()))

    def _restore(self, now: float) -> int:
        """Put the stored jobs back on the current clock; returns how many are kept.

        World time need not continue where the store left it: a restart on a journal
        whose world time lies a month later, or a fresh ``--start`` earlier than the
        stored jobs. A job the journal has recorded is dropped (it ran, or was judged);
        one later than any grace (:data:`MAX_GRACE_S`) is judged missed now, without
        computing its night's ephemerides; one planned for a night that is neither
        tonight nor tomorrow, in the future, is dropped (:meth:`plan` adds it again when
        its night comes). The rest fire on the current clock, judged as usual."""
        recorded = self.d.journal.jobs_recorded()
        current = set(self.nights_for(self.config, now))
        kept = 0
        for job in self.scheduler.get_jobs():
            due = Due(**job.kwargs)
            late = now - due.world_t
            if due.job_id in recorded or (late < 0 and due.night not in current):
                self.scheduler.remove_job(job.id)
            elif late > MAX_GRACE_S:
                self.scheduler.remove_job(job.id)
                self._missed(due, now)
            else:
                # A stored job's wall time belongs to the clock of the run that stored it.
                self.scheduler.modify_job(job.id, next_run_time=self._wall(due.world_t))
                kept += 1
        return kept

    def stop(self) -> None:
        global _ACTIVE
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if _ACTIVE is self:
            _ACTIVE = None

    def _wall(self, world_t: float) -> datetime:
        # World time first: a pause between the two readings then errs late, never early.
        now = self.clock.now()
        wall = time.time() + (world_t - now) / self.clock.speed
        return datetime.fromtimestamp(wall, tz=UTC)

    def times(self, night: str) -> list[tuple[str, str, str | None, float]]:
        """The night's jobs: (id, kind, site, world time)."""
        eph, _sky = self.d.core.nights.get(night)
        out, dawns = [], []
        for s in self.config.sites:
            dark = eph.dark[s.id]
            if not dark:
                continue  # no astronomical night (summer at high latitude)
            dawn = dark[-1][1] + self.ops.dawn_margin_s
            dawns.append(dawn)
            out.append((f"dusk:{night}:{s.id}", "dusk", s.id, dark[0][0]))
            out.append((f"dawn:{night}:{s.id}", "dawn", s.id, dawn))
        if dawns:
            t_report = max(dawns) + self.ops.report_delay_s
            out.append((f"report:{night}", "report", None, t_report))
            if self.ops.retrain_classifier:
                out.append((f"retrain:{night}", "retrain", None,
                            t_report + self.ops.retrain_delay_s))
        return out

    def grace_s(self, kind: str, night: str, site: str | None, world_t: float) -> float:
        """How late (world seconds) a job may still run."""
        if kind == "dusk":
            eph, _ = self.d.core.nights.get(night)
            return max(0.0, eph.dark[site][-1][1] - world_t)
        if kind == "dawn":
            return DAWN_GRACE_S
        if kind == "report":
            return REPORT_GRACE_S
        return self.ops.retrain_grace_h * 3600.0

    @staticmethod
    def nights_for(config, now: float) -> tuple[str, str]:
        """The nights :meth:`plan` schedules at world time ``now``: tonight, tomorrow."""

        return night_date(config, now), night_date(config, now + 86400.0)

    def plan(self, now: float) -> int:
        """Schedule tonight's and the next night's jobs that are not done, not already
        in the store, and not too late to run. Returns how many were added."""

        today, tomorrow = self.nights_for(self.config, now)
        if self._planned_for == today:
            return 0
        done = self.d.journal.jobs_recorded()
        added = 0
        for night in (today, tomorrow):
            for job_id, kind, site, t in self.times(night):
                if job_id in done or t + self.grace_s(kind, night, site, t) < now:
                    continue
                try:
                    self.scheduler.add_job(
                        "brain.ops.nightjobs:fire", "date", id=job_id, run_date=self._wall(t),
                        kwargs={"job_id": job_id, "kind": kind, "night": night,
                                "site": site, "world_t": t},
                        replace_existing=False)
                    added += 1
                except ConflictingIdError:
                    pass  # kept from an earlier run
        self._planned_for = today
        return added

    # The loop's side -----------------------------------------------------------------
    def step(self) -> bool:
        """Run what is due; called by the daemon's loop each turn. True if it did work."""
        worked = self._check_busy()
        if self._early:
            now, held = self.clock.now(), self._early
            self._early = [e for e in held if e.world_t > now]
            for e in held:
                if e.world_t <= now:
                    self.due.put(e)
        held, self._waiting = self._waiting, []
        for due in held:  # the ones held longest first
            if self._busy is not None:
                self._waiting.append(due)
                continue
            self._run(due)
            worked = True
        while True:
            try:
                due = self.due.get_nowait()
            except queue.Empty:
                break
            if self._busy is not None and due.kind in BACKGROUND_JOBS:
                self._waiting.append(due)  # one report or retraining at a time
                continue
            self._run(due)  # dusk and dawn never wait behind a report or a retraining
            worked = True
        if worked:
            self.plan(self.clock.now())
        return worked

    def _count(self, kind: str, result: str) -> None:
        self.counts[(kind, result)] = self.counts.get((kind, result), 0) + 1
        m = self.d.metrics
        if m is not None:
            m.night_jobs.inc(kind, result)

    def _run(self, due: Due) -> None:
        j, now = self.d.journal, self.clock.now()
        status = j.job_status(due.job_id)
        if status in ("done", "missed", "failed", "skipped"):
            log.info("night job %s already %s: not run again", due.job_id, status)
            self._count(due.kind, "duplicate")
            return
        if now < due.world_t:
            self._early.append(due)  # no job runs before its time
            return
        if now - due.world_t > self.grace_s(due.kind, due.night, due.site, due.world_t):
            self._missed(due, now)
            return
        getattr(self, f"_{due.kind}")(due, now)

    def _missed(self, due: Due, now: float) -> None:
        late = now - due.world_t
        with self.d.journal.transaction():
            self.d.journal.job(due, "missed", now, {"late_s": round(late, 1)})
        log.warning("night job %s missed: %.1f h late", due.job_id, late / 3600)
        self._count(due.kind, "missed")

    def _finish(self, due: Due, status: str, now: float, detail: dict) -> None:
        with self.d.journal.transaction():
            self.d.journal.job(due, status, now, detail)
        self._count(due.kind, status)
        level = logging.INFO if status in ("done", "skipped") else logging.ERROR
        log.log(level, "night job %s %s: %s", due.job_id, status, json.dumps(detail))

    def _act(self, due: Due, now: float, decide) -> None:
        """A job that commands devices: ``decide()`` -> (commands, detail), journalled with
        the job in one transaction, then sent."""
        with self.d.journal.transaction():
            cmds, detail = decide()
            self.d.send(cmds, now)
            self.d.journal.job(due, "done", now, detail)
        self.d.flush()
        self._count(due.kind, "done")
        log.info("%s at %s: %s", due.kind, due.site, json.dumps(detail))

    def _dusk(self, due: Due, now: float) -> None:
        core = self.d.core

        def decide():
            cmds = core.review_safety(now)
            site = core.sites[due.site]
            return cmds, {"open": site.open, "weather": site.verdict.rule or "safe",
                          "held_closed": site.held_closed,
                          "groups_up": sum(core.group_up(g) for g in core.groups
                                           if g.site == due.site)}

        self._act(due, now, decide)

    def _dawn(self, due: Due, now: float) -> None:
        def decide():
            cmds = self.d.core.dawn_close(due.site, now)
            t0, t1 = night_span(self.config, due.night)
            closed = {c.device.rsplit(".", 1)[0] for c in cmds}  # groups, as site.gNN
            return cmds, {"closed_groups": len(closed),
                          **self.d.journal.night_counts(due.site, t0, min(t1, now))}

        self._act(due, now, decide)
        dawns = [t for _j, kind, _s, t in self.times(due.night) if kind == "dawn"]
        if now >= max(dawns) and self._closed_night != due.night:
            self._closed_night = due.night  # the last site's dawn: the night goes to the store
            self.d.close_night(now)

    def _report(self, due: Due, now: float) -> None:
        with self.d.journal.transaction():
            self.d.journal.job(due, "started", now, {})
        inputs = gather(self.d, due.night)  # on the loop: a consistent snapshot
        out = self.night_dir(due.night)
        result: dict = {}

        def render():
            try:
                result["detail"] = write_night(out, inputs)
            except Exception as exc:  # a failed report must not take the night down
                result["error"] = f"{type(exc).__name__}: {exc}"

        th = threading.Thread(target=render, name="night-report", daemon=True)
        th.start()
        self._busy = (due, th, result)

    def night_dir(self, night: str) -> Path:
        return self.state_dir / "nights" / night

    def _retrain(self, due: Due, now: float) -> None:
        runs = sorted(str(p.parent) for p in (self.state_dir / "nights").glob("*/labelled.csv")
                      if _has_rows(p))
        if not runs:
            self._finish(due, "skipped", now, {"reason": "no labelled spectra in the store"})
            return
        out = self.state_dir / "models" / f"classifier-{due.night}"
        cmd = [sys.executable, "-m", "brain", "train", "classifier", "--from-runs", *runs,
               "--n-per-class", str(self.ops.retrain_n_per_class), "--out", str(out)]
        with self.d.journal.transaction():
            self.d.journal.job(due, "started", now, {"runs": len(runs), "out": str(out)})
        logf = (self.state_dir / "models").joinpath(f"retrain-{due.night}.log")
        logf.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with logf.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:  # low priority: the retraining must not take CPU from the loop
            os.setpriority(os.PRIO_PROCESS, proc.pid, 10)
        except OSError:
            pass  # already gone: its exit status says why
        self._busy = (due, proc, {"out": out, "runs": len(runs), "log": logf})
        log.info("retraining the classifier with %d nights' labels -> %s", len(runs), out)

    def _check_busy(self) -> bool:
        if self._busy is None:
            return False
        due, work, info = self._busy
        now = self.clock.now()
        if isinstance(work, threading.Thread):
            if work.is_alive():
                return False
            self._busy = None
            if "error" in info:
                self._finish(due, "failed", now, {"error": info["error"]})
            else:
                self._finish(due, "done", now, info["detail"])
            return True
        if work.poll() is None:
            return False
        self._busy = None
        if work.returncode != 0:
            self._finish(due, "failed", now, {"returncode": work.returncode,
                                              "log": str(info["log"])})
            return True
        detail = {"out": str(info["out"]), "runs": info["runs"]}
        try:  # the training's report: the last line it printed
            last = info["log"].read_text().strip().splitlines()[-1]
            detail.update(promote(info["out"], json.loads(last), self.state_dir))
        except (OSError, ValueError, IndexError, KeyError) as exc:
            detail["promoted"] = False
            detail["reason"] = f"unreadable training report ({exc})"
        self._finish(due, "done", now, detail)
        return True

    def close(self) -> None:
        """Stop the scheduler; a report thread is given a few seconds, a retraining is
        stopped (it is run again on the next start: its job stays 'started')."""
        self.stop()
        if self._busy is not None:
            _due, work, _info = self._busy
            if isinstance(work, threading.Thread):
                work.join(timeout=10.0)
                if not work.is_alive():
                    self._check_busy()
            else:
                work.terminate()
                try:
                    work.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    work.kill()


def _has_rows(path: Path) -> bool:
    with path.open() as fh:
        return sum(1 for _ in zip(fh, range(2), strict=False)) > 1


PROMOTED = "classifier-current.json"


def promote(candidate: Path, report: dict, state_dir: Path) -> dict:
    """Promote a retrained classifier when its first-night macro-F1 on the fixed test
    set is at least the current one's; the daemon loads the promoted model on its next
    start (``brain run`` reads ``<state>/models/classifier-current.json``)."""
    current = current_classifier(state_dir)
    base = _first_night_f1(current)
    new = float(report["macro_f1_first_night"])
    ok = base is None or new >= base - 1e-9
    if ok:
        path = state_dir / "models" / PROMOTED
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"directory": str(candidate), "macro_f1_first_night": new,
                                   "promoted_wall": time.time()}) + "\n")
        tmp.replace(path)
    return {"promoted": ok, "macro_f1_first_night": new, "previous": base}


def current_classifier(state_dir: Path) -> Path:
    """The promoted classifier's directory, or the shipped artifact."""

    path = Path(state_dir) / "models" / PROMOTED
    if path.is_file():
        try:
            d = Path(json.loads(path.read_text())["directory"])
            TransientClassifier.load(d)  # a model this code cannot use is not used
            return d
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s: promoted classifier unusable (%s): using the shipped one", path,
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return ARTIFACT_DIR


def _first_night_f1(directory: Path) -> float | None:
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text())
        f1 = meta["report"]["test"]["first_night"]["macro_f1"]
        return float(f1) if f1 is not None and math.isfinite(f1) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
