"""The brain core: ``handle(event) -> commands``, the same in every shell.

It owns the array's operating state (which sites are open, what each group is doing),
applies safety to every event and command, and asks the survey scheduler for a field
whenever a group falls idle. It never touches a socket, a clock or the simulator's
truth: time comes with the events, the sky comes from the ephemerides.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from dataclasses import field as dc_field

import numpy as np

from brain.config import BrainConfig
from brain.core.association import Associator, DetectionBatch
from brain.core.events import (
    Command,
    DetectionsEvent,
    DeviceState,
    Done,
    Event,
    Failed,
    Operator,
    Tick,
    Weather,
)
from brain.core.followup import take_snapshot
from brain.core.operator import PlanState, SurveyRegion, region_mask
from brain.core.safety import Verdict, out_of_range, weather_verdict
from brain.core.survey import SurveyScheduler
from brain.core.transients import Transients
from observatory.ephemeris import night_date, night_span
from observatory.sky import FieldGrid
from observatory.taxonomy import CLASSES
from observatory.visibility import FieldSky, NightCache, target_alt_deg

CLOSED, IDLE, SLEWING, EXPOSING = "closed", "idle", "slewing", "exposing"
# plan_state's candidate list is rebuilt when a classification pass has answered, else
# at most once a minute of world time: with 20,000 candidates it costs hundreds of ms,
# and the operators' desk asks for a state every 2 s on the daemon's loop.
OBJECTS_REFRESH_S = 60.0


@dataclass
class GroupState:
    index: int
    site: str
    name: str
    devices: tuple[str, ...]
    phase: str = CLOSED
    field: int | None = None
    pointing_xyz: np.ndarray | None = None  # None: parked
    pending: dict[str, str] = dc_field(default_factory=dict)  # cmd_id -> device
    t_starts: list[float] = dc_field(default_factory=list)
    readout_until: float = -math.inf  # the cameras read out while the mount slews
    paused: bool = False  # by the operator: no new survey fields


@dataclass
class SiteState:
    open: bool = False
    held_closed: bool = False  # closed by the operator: stays closed until open_site
    weather: Weather | None = None
    verdict: Verdict = dc_field(default_factory=lambda: Verdict(False, "weather_missing"))


class BrainCore(Transients):
    DECISIONS_KEPT = 200_000  # decision times kept for the percentiles (a few nights)

    def __init__(self, config: BrainConfig, grid: FieldGrid | None = None,
                 nights: NightCache | None = None, scheduler: SurveyScheduler | None = None,
                 classifier=None, followup=None, require_devices: bool = False,
                 store=None):
        self.config = config
        self.grid = grid or FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
        self.nights = nights or NightCache(config, self.grid)
        self.scheduler = scheduler or SurveyScheduler(config, self.grid.size)
        self.groups = [GroupState(i, g.site, g.name,
                                  tuple(g.telescope(b) for b in config.camera.bands))
                       for i, g in enumerate(config.groups)]
        self.sites = {s.id: SiteState() for s in config.sites}
        self.sky: FieldSky | None = None
        self._date: str | None = None
        self._night_span = (math.inf, -math.inf)  # [t0, t1) of the cached night's date
        self._cmd_group: dict[str, int] = {}
        self._obs_seq = 0
        # The latest decisions' times (bounded: memory stays flat over a season, even if
        # no night is ever closed) and how many were made in all.
        self.decision_ms: deque[float] = deque(maxlen=self.DECISIONS_KEPT)
        self.decisions = 0
        self.refusals: Counter[str] = Counter()
        self.vetoes: Counter[str] = Counter()  # commands the guard refused, by rule
        self._guard_site: dict[str, tuple] = {}  # site -> (t, weather, rule): see guard
        # (site, field) -> weather reports with that field outside its physical range
        self.weather_rejected: Counter[tuple[str, str]] = Counter()
        # Transients: association each minute, classification every classify_interval_s.
        # The catalogue and the active window; the rest in ``store`` (brain/core/store.py).
        self.associator = Associator(config.transients.radius_arcsec, store=store,
                                     memory_nights=config.store.memory_nights,
                                     orphan_days=config.store.orphan_days,
                                     keep_orphans=config.store.keep_orphans)
        self._pending: list[DetectionBatch] = []
        self._classifier = classifier
        self._next_classify = -math.inf
        self.now = -math.inf  # the latest event's time
        self.classify_ms: list[float] = []
        self.n_classified = 0  # classifications made (an object may count several times)
        self._objects_cache: tuple | None = None  # plan_state's list: (n_classified, t, it)
        # The daemon: write the store at each classification pass (``flushed(t)`` is told;
        # the journal's detection messages up to then need not be replayed on restart).
        self.on_flush = None
        self.offload = None  # callable(t, job): a shell that classifies off its loop
        # Spectroscopic follow-up (brain.core.followup.FollowupManager), when a policy is given.
        self.followup = followup
        # Daemon shell: only devices that said HELLO (and are alive) are used; a group is
        # scheduled only while all three of its telescopes are up.
        self.down: set[str] = set()
        if require_devices:
            self.down = {d for g in self.groups for d in g.devices}
            if followup is not None:
                self.down |= set(followup.specs)
        self.on_visit = None  # callback(field, group, t_start): the daemon journals visits

    # Entry point -------------------------------------------------------------------
    @property
    def obj_prob(self) -> np.ndarray:
        """Class probabilities by catalogue row (zeros: not classified yet)."""
        return self.associator.prob

    @obj_prob.setter
    def obj_prob(self, value) -> None:
        self.associator.prob[:] = value
        self.associator.mark_dirty(slice(0, self.associator.n_objects))

    def handle(self, event: Event) -> list[Command]:
        self.ensure_night(event.t)
        self.now = max(self.now, event.t)
        if (self.followup is not None and isinstance(event, Done | Failed)
                and event.device in self.followup.specs):
            self.followup.on_reply(event)
            return []
        if isinstance(event, Done):
            return self._on_done(event)
        if isinstance(event, Weather):
            site = self.sites.get(event.site)
            if site is None:
                self.refusals["unknown_site"] += 1
                return []
            site.weather = event  # an impossible value makes the verdict unsafe
            bad = out_of_range(event)
            for name in bad:
                self.weather_rejected[(event.site, name)] += 1
            if not bad:
                self.scheduler.depth.conditions[event.site] = (event.seeing_arcsec,
                                                               event.cloud)
            return self._review_site(event.site, event.t)
        if isinstance(event, DetectionsEvent):
            self._pending.append(event.batch)
            return []
        if isinstance(event, Tick):
            self._process_detections(event.t)
            cmds: list[Command] = []
            for site_id in self.sites:
                cmds += self._review_site(site_id, event.t)
            for g in self.groups:
                if (g.phase == IDLE and self.sites[g.site].open and self.group_up(g)
                        and not g.paused):
                    cmds += self._schedule(g, event.t)
            if self.followup is not None:
                open_sites = {k: s.open for k, s in self.sites.items()}
                if self.down:
                    open_sites = {k: v and f"{k}.spec" not in self.down
                                  for k, v in open_sites.items()}
                cmds += self.followup.tick(event.t, open_sites, self.sky.night)
            return cmds
        if isinstance(event, Failed):
            return self._on_failed(event)
        if isinstance(event, DeviceState):
            return self._on_device(event)
        if isinstance(event, Operator):
            return self._on_operator(event)
        raise TypeError(f"unknown event {type(event).__name__}")

    # Sites -------------------------------------------------------------------------
    def ensure_night(self, t: float) -> None:
        """The ephemerides of the night that holds ``t`` (unix s), computed now if they
        are not cached (about a second): a shell calls it before its loop starts so the
        first event is not delayed."""
        if self._night_span[0] <= t < self._night_span[1]:
            return
        date = night_date(self.config, t)
        self._date = date
        _night, self.sky = self.nights.get(date)
        self._night_span = night_span(self.config, date)

    def _is_dark(self, site: str, t: float) -> bool:
        return self.sky.night.sites[site].is_dark(t, self.config.limits.max_sun_alt_deg)

    def _review_site(self, site_id: str, t: float) -> list[Command]:
        site = self.sites[site_id]
        site.verdict = weather_verdict(self.config.limits, site.weather, t)
        dark = self._is_dark(site_id, t)
        groups = [g for g in self.groups if g.site == site_id]
        if site.held_closed:
            return self._close_site(site_id, t, force=True) if site.open else []
        if site.verdict.safe and dark and not site.open:
            site.open = True
            cmds = []
            for g in groups:
                if self.group_up(g):
                    g.phase = IDLE
                    cmds += [Command(d, "open", deadline=t + 120) for d in g.devices]
            return cmds
        if site.open and not site.verdict.safe:
            self.refusals[site.verdict.rule] += 1
            return self._close_site(site_id, t, force=True)
        if site.open and not dark:
            return self._close_site(site_id, t, force=False)
        return []

    def _close_site(self, site_id: str, t: float, force: bool) -> list[Command]:
        """Unsafe: close and park every telescope now. Dawn: close idle groups; busy
        groups close when their exposure ends (it was planned to end in the dark)."""
        self.sites[site_id].open = False
        cmds: list[Command] = []
        closing = [g for g in self.groups if g.site == site_id
                   and g.phase != CLOSED and (force or g.phase == IDLE)]
        for g in closing:
            cmds += self._close_group(g, t)
        self.scheduler.release([g.index for g in self.groups if g.site == site_id])
        return cmds

    def dawn_close(self, site_id: str, t: float) -> list[Command]:
        """The dawn job: whatever of the site is still open is closed and parked now."""
        self.ensure_night(t)
        return self._close_site(site_id, t, force=True)

    def _close_group(self, g: GroupState, t: float) -> list[Command]:
        if g.field is not None and g.phase in (SLEWING, EXPOSING):
            self.scheduler.unclaim(g.field)
        for cmd_id in g.pending:
            self._cmd_group.pop(cmd_id, None)
        g.pending.clear()
        g.phase, g.field, g.pointing_xyz = CLOSED, None, None
        return [Command(d, n, deadline=t + 180) for d in g.devices for n in ("close", "park")]

    # Devices -----------------------------------------------------------------------
    def group_up(self, g: GroupState) -> bool:
        return not self.down or not any(d in self.down for d in g.devices)

    def _on_device(self, ev: DeviceState) -> list[Command]:
        """A device came up or went down. A group with a dead telescope is closed and
        parked (what still answers); it rejoins, opened, once all three are back."""
        if ev.up:
            self.down.discard(ev.device)
        else:
            self.down.add(ev.device)
        for g in self.groups:
            if ev.device not in g.devices:
                continue
            if not ev.up and g.phase != CLOSED:
                return self._close_group(g, ev.t)
            if ev.up and self.group_up(g) and g.phase == CLOSED and self.sites[g.site].open:
                g.phase = IDLE
                return [Command(d, "open", deadline=ev.t + 120) for d in g.devices]
        return []

    def review_safety(self, t: float) -> list[Command]:
        """Safety between ticks (the daemon calls it every few seconds of world time)."""
        self.ensure_night(t)
        cmds: list[Command] = []
        for site_id in self.sites:
            cmds += self._review_site(site_id, t)
        return cmds

    def guard(self, cmd: Command, t: float) -> str | None:
        """The last check before a command leaves the brain: the rule that forbids it,
        or None. Moving or opening needs a safe, dark site (missing weather is unsafe);
        a slew must stay above the altitude limit."""
        if cmd.name not in ("open", "slew", "expose", "spectrum"):
            return None
        site_id = cmd.device.split(".", 1)[0]
        site = self.sites.get(site_id)
        if site is None:
            return "unknown_site"
        rule = self._site_rule(site_id, site, t)
        if rule is not None:
            return rule
        if cmd.name == "slew":
            alt = float(target_alt_deg(self.sky.night.sites[site_id], cmd.args["ra_deg"],
                                       cmd.args["dec_deg"], t))
            # J2000 against the apparent sky: up to 0.4 deg off, hence the 0.5 deg slack;
            # the exact limit is checked at both ends of every exposure (_field_rule).
            if alt < self.config.limits.min_alt_deg - 0.5:
                return "altitude"
        return None

    def _site_rule(self, site_id: str, site: SiteState, t: float) -> str | None:
        """The site's part of :meth:`guard` (weather, then darkness), once per site, time
        and weather report: a shell sends many commands at the same instant."""
        hit = self._guard_site.get(site_id)
        if hit is not None and hit[0] == t and hit[1] is site.weather:
            return hit[2]
        verdict = weather_verdict(self.config.limits, site.weather, t)
        rule = (verdict.rule if not verdict.safe
                else None if self._is_dark(site_id, t) else "sun")
        self._guard_site[site_id] = (t, site.weather, rule)
        return rule

    def restore(self, visits, exposures: int, detections: DetectionBatch | None) -> None:
        """What a restarted shell read back from its journal: the survey's ``visits``
        ((field, group, t_start unix s) each), the number of ``exposures`` commanded so
        far (new exposure ids continue after it) and the ``detections`` so far."""
        for field_id, group, t_start in visits:
            self.scheduler.add_observation(int(field_id), int(group), float(t_start))
        self._obs_seq = max(self._obs_seq, int(exposures))
        if detections is not None and len(detections):
            self.associator.add(detections)

    def refuse(self, cmd: Command, t: float, rule: str) -> list[Command]:
        """A command the guard refused: counted by rule and handed back to the core as
        ``FAILED unsafe``, which frees its group or spectrograph. Returns the core's new
        commands, which go through the guard again."""
        self.vetoes[rule] += 1
        return self.handle(Failed(t, cmd.device, cmd.cmd_id, "unsafe",
                                  f"refused by safety rule {rule}"))


    # Operator --------------------------------------------------------------------
    def _on_operator(self, ev: Operator) -> list[Command]:
        """An approved planner action (validated before; re-checked here only for what
        would make it unsafe or undefined: the core never trusts its caller)."""
        a, t = ev.args, ev.t
        if "site" in a and a["site"] not in self.sites:
            raise ValueError(f"unknown site {a['site']!r}")
        if ev.tool in ("pause_group", "resume_group"):
            g = next((x for x in self.groups if x.name == a["group"]), None)
            if g is None:
                raise ValueError(f"unknown group {a['group']!r}")
            g.paused = ev.tool == "pause_group"
            if not g.paused and g.phase == IDLE and self.sites[g.site].open \
                    and self.group_up(g):
                return self._schedule(g, t)
            return []
        if ev.tool == "close_site":
            self.sites[a["site"]].held_closed = True
            return self._review_site(a["site"], t)
        if ev.tool == "open_site":
            self.sites[a["site"]].held_closed = False
            return self._review_site(a["site"], t)  # opens only if safe and dark
        if ev.tool == "set_survey_region":
            r = SurveyRegion.model_validate(a)
            self.scheduler.region = region_mask(self.grid.ra_deg, self.grid.dec_deg, r)
            return []
        if ev.tool in ("request_followup", "cancel_followup"):
            if self.followup is None:
                raise ValueError("follow-up is off (no policy or no spectrograph)")
            oid = int(str(a["object_id"]).lstrip("o"))
            if ev.tool == "request_followup":
                self.followup.request(oid)
            else:
                self.followup.cancel(oid)
            return []
        raise ValueError(f"{ev.tool} is not an action")

    def plan_state(self, t: float, objects: bool = True):
        """What the planner may know now (brain.core.operator.PlanState): sites, groups, the
        classified candidates, follow-up and budget. Never the simulator's truth. With
        ``objects=False`` the candidates are left out (the costly part: hundreds of
        milliseconds with 20,000 of them; the operator page lists its own few)."""

        self.ensure_night(t)
        sites = {}
        for sid, s in self.sites.items():
            v = weather_verdict(self.config.limits, s.weather, t)
            eph = self.sky.night.sites[sid]
            sun = float(eph.sun_alt(t))
            sites[sid] = {"name": next(x.name for x in self.config.sites if x.id == sid),
                          "open": s.open, "safe": v.safe, "rule": v.rule,
                          "held_closed": s.held_closed,
                          "dark": eph.is_dark(t, self.config.limits.max_sun_alt_deg),
                          "sun_alt_deg": round(sun, 1)}
        groups = {g.name: {"site": g.site, "paused": g.paused, "phase": g.phase,
                           "up": self.group_up(g)} for g in self.groups}
        listed, objects = objects, {}
        n_cls = self.obj_prob.shape[1] if self.obj_prob.ndim == 2 else 0
        cached = self._objects_cache
        if (listed and cached is not None and cached[0] == self.n_classified
                and 0.0 <= t - cached[1] < OBJECTS_REFRESH_S):
            objects = dict(cached[2])
        elif listed and n_cls and self.associator.n_objects:
            # Every classified candidate, however old or faint (no follow-up filter).
            snap = take_snapshot(t, self.associator, self.candidates(t), math.inf, math.inf)
            for k, oid in enumerate(snap.object_id):
                c = int(np.argmax(snap.prob[k]))
                objects[f"o{int(oid):07d}"] = {
                    "ra_deg": round(float(snap.ra_deg[k]), 6),
                    "dec_deg": round(float(snap.dec_deg[k]), 6),
                    "n_detections": int(snap.n_det[k]), "predicted_class": CLASSES[c],
                    "p_predicted": round(float(snap.prob[k, c]), 4),
                    "mag": round(float(snap.mag[k]), 3), "note": ""}
            self._objects_cache = (self.n_classified, t, dict(objects))
        followups, spec_left = {}, {}
        fu = self.followup
        if fu is not None:
            for rec in fu.records.values():
                followups[f"o{rec.object_id:07d}"] = ("done" if rec.status == "done" else
                                                       "taken")
            for oid in fu.requested:
                followups.setdefault(f"o{oid:07d}", "requested")
            cap = fu.settings.max_hours_per_night
            for st in fu.specs.values():
                dark = self.sky.night.sites[st.site].dark_left_s(
                    t, self.config.limits.max_sun_alt_deg)
                spec_left[st.site] = max(0.0, min(dark, math.inf if cap is None
                                                  else cap * 3600 - st.used_s))
        region = None
        if self.scheduler.region is not None:
            region = [int(self.scheduler.region.sum())]
        summary = {"group_exposures": self._obs_seq,
                   "objects": self.associator.n_objects,
                   "candidates": len(objects) if listed else None,
                   "spectra": len(fu.records) if fu is not None else 0,
                   "refusals": dict(self.refusals)}
        return PlanState(t, "daemon", sites, groups, objects, followups, spec_left,
                         region, summary)

    # Groups ------------------------------------------------------------------------
    def _schedule(self, g: GroupState, t: float) -> list[Command]:
        t0 = time.perf_counter()
        f = self.scheduler.choose(self.sky, g.index, g.site, t, g.pointing_xyz)
        self.decision_ms.append((time.perf_counter() - t0) * 1e3)
        self.decisions += 1
        if f is None:
            g.phase = IDLE
            return []
        self.scheduler.claim(f, g.index)
        g.phase, g.field = SLEWING, f
        ra, dec = float(self.grid.ra_deg[f]), float(self.grid.dec_deg[f])
        cmds = [Command(d, "slew", {"ra_deg": ra, "dec_deg": dec}, deadline=t + 120)
                for d in g.devices]
        self._expect(g, cmds)
        return cmds

    def _expect(self, g: GroupState, cmds: list[Command]) -> None:
        g.pending = {c.cmd_id: c.device for c in cmds}
        for c in cmds:
            self._cmd_group[c.cmd_id] = g.index

    def _on_done(self, ev: Done) -> list[Command]:
        gi = self._cmd_group.pop(ev.cmd_id, None)
        if gi is None:
            return []  # open/close/park acknowledgements, or a late duplicate
        g = self.groups[gi]
        g.pending.pop(ev.cmd_id, None)
        if g.phase == EXPOSING:
            g.t_starts.append(float(ev.result.get("t_start", ev.t)))
            g.readout_until = max(g.readout_until, float(ev.result.get("t_end", ev.t))
                                  + self.config.camera.readout_s)
        if g.pending:
            return []
        if g.phase == SLEWING:
            g.pointing_xyz = self.sky.grid_xyz[g.field]
            return self._expose(g, ev.t)
        if g.phase == EXPOSING:
            t_start = min(g.t_starts)
            self.scheduler.add_observation(g.field, g.index, t_start)
            if self.on_visit is not None:
                self.on_visit(g.field, g.index, t_start)
            g.phase, g.field = IDLE, None
            if not self.sites[g.site].open:
                return self._close_group(g, ev.t)
            return [] if g.paused else self._schedule(g, ev.t)
        return []

    def _expose(self, g: GroupState, t: float) -> list[Command]:
        """Safety is checked again on the command itself, at the real start time."""
        exp = self.config.survey.exposure_s
        t_start = max(t, g.readout_until)
        rule = self._field_rule(g.site, g.field, t_start, t_start + exp)
        if rule != "ok" or not self.sites[g.site].open:
            self.refusals[rule if rule != "ok" else "site_closed"] += 1
            self.scheduler.unclaim(g.field)
            g.phase, g.field = IDLE, None
            return self._schedule(g, t) if self.sites[g.site].open else []
        g.phase, g.t_starts = EXPOSING, []
        self._obs_seq += 1
        cmds = [Command(d, "expose", {"seconds": exp, "obs_id": f"{d}-{self._obs_seq:07d}",
                                      "field_id": int(g.field)}, deadline=t + exp + 60)
                for d in g.devices]
        self._expect(g, cmds)
        return cmds

    def _field_rule(self, site: str, f: int, t_start: float, t_end: float) -> str:
        lim = self.config.limits
        idx = np.array([f])
        for t in (t_start, t_end):
            if self.sky.alt_deg(site, t, idx)[0] < lim.min_alt_deg:
                return "altitude"
            if not self.sky.night.sites[site].is_dark(t, lim.max_sun_alt_deg):
                return "sun"
        if self.sky.moon_sep_deg(site, 0.5 * (t_start + t_end), idx)[0] < lim.min_moon_sep_deg:
            return "moon"
        return "ok"

    def _on_failed(self, ev: Failed) -> list[Command]:
        self.refusals[f"device_{ev.code}"] += 1
        gi = self._cmd_group.pop(ev.cmd_id, None)
        if gi is None:
            return []
        g = self.groups[gi]
        others = [d for c, d in g.pending.items() if c != ev.cmd_id]
        for cmd_id in list(g.pending):
            self._cmd_group.pop(cmd_id, None)
        g.pending.clear()
        if g.field is not None:
            self.scheduler.unclaim(g.field)
        g.phase, g.field = IDLE, None
        return [Command(d, "abort", deadline=ev.t + 30) for d in others]

    # Views -------------------------------------------------------------------------
    def decision_percentiles(self) -> dict[str, float]:
        if not self.decision_ms:
            return {"p50": math.nan, "p99": math.nan}
        a = np.fromiter(self.decision_ms, dtype=float, count=len(self.decision_ms))
        return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}
