"""The follow-up manager: which candidate each spectroscopic telescope observes next.

The core hands it a ``Snapshot`` of the candidates each time it reclassifies them, and
calls ``tick`` every minute with the sites' open/closed state. For each free telescope
at an open site it builds the ``CandidateTable`` of what that telescope could observe
now (above the altitude limit with a margin for the whole exposure, away from the moon,
finished before the end of astronomical darkness, not already observed) and asks the
policy; the answer becomes a ``spectrum`` command, or the telescope waits
``followup.wait_s``. A spectrum that comes back stores its label: the labels are the
training data of the next classifier (``brain train classifier --from-runs``).

The manager only sees what the brain knows (positions, photometry, probabilities,
labels); the reward is scored outside, by the shell, from the simulator's truth.

``FollowupLoop`` (brain/evaluation/followup_replay.py) re-runs the manager alone over a
recorded ``Stream`` (brain/core/stream.py) of snapshots and site states. The
survey does not depend on the follow-up (the spectroscopic telescopes are separate
devices), so a policy evaluated on a stream faces exactly the candidates, weather and
sky it would face inside the full fast shell, in a small fraction of the time; tests
check that both give the same follow-ups.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from brain.core.events import Command, Done, Failed
from brain.core.stream import Snapshot, Stream
from brain.core.stream import take_snapshot as take_snapshot  # the core's import
from observatory.mount import move_time_s
from observatory.sky import unit_vectors
from observatory.spectra import SPEC_MOUNT, exposure_s, science_reward
from observatory.taxonomy import CLASSES
from observatory.times import unix_to_mjd
from observatory.visibility import target_alt_deg
from policies.candidates import WAIT, CandidateTable, label_probability, peak_passed

SIDEREAL_DEG_S = 360.0 / 86164.0905


def candidate_ids(associator, min_detections: int, now_mjd: float, new_days: float,
                  change_mag: float, classified_only: bool = True,
                  reference_mag: float | None = None) -> np.ndarray:
    """The brain's one candidate rule: objects with at least ``min_detections``
    detections that are new (first seen within ``new_days`` of ``now_mjd``) or have
    changed beyond their history (:meth:`Associator.changed`); with
    ``classified_only``, only those the classifier has seen. Catalogue rows, ascending.
    The rest is the known sky: variables that keep their class until they change.
    With ``reference_mag``, a new object whose detections all lie within that (plus
    three errors) of the survey reference's source at its place is a star the reference
    already holds, not new (docs/season.md, "New against the reference"); an object
    with no reference value compared stays new."""
    n_obj = associator.n_objects
    if n_obj == 0:
        return np.zeros(0, dtype=np.int64)
    ok = associator.n_detections() >= min_detections
    new = associator.first_mjd >= now_mjd - new_days
    if reference_mag is not None:
        new &= ~(associator.cat["ref_dev"][:n_obj] <= reference_mag)  # NaN: stays new
    ok &= new | associator.changed(change_mag)
    if classified_only:
        ok &= associator.prob.sum(axis=1) > 0
    return np.flatnonzero(ok)


@dataclass
class SpecState:
    device: str
    site: str
    spec: object  # observatory.arrayconfig.Spectrograph
    is_open: bool = False
    busy: dict | None = None  # the spectrum in progress
    ra_deg: float | None = None
    dec_deg: float | None = None
    next_decision: float = -math.inf
    used_s: float = 0.0  # tonight
    season_used_s: float = 0.0  # since the manager started (or the journal's spectra)


@dataclass
class FollowupRecord:
    """One spectrum as the brain records it (the shell adds truth and reward)."""

    target_id: str
    object_id: int
    telescope: str
    t_cmd: float
    t_start: float
    t_end: float
    mag: float
    predicted_class: str
    p_predicted: float
    label: str | None = None
    before_peak: bool = False
    status: str = "pending"  # pending, done, failed, aborted


class FollowupManager:
    def __init__(self, config, policy, seed: int = 0):
        self.config = config
        self.settings = config.followup
        self.policy = policy
        self.specs = {f"{s.site}.spec": SpecState(f"{s.site}.spec", s.site, s)
                      for s in config.spectrographs}
        self.snapshot: Snapshot | None = None
        self.taken: set[int] = set()  # objects observed or being observed
        self.labels: dict[int, str] = {}
        self.records: dict[str, FollowupRecord] = {}
        self._cmd_target: dict[str, str] = {}
        self._seq = itertools.count(1)
        self._date: str | None = None
        self.n_decisions = 0
        # What the loop needs to re-run the manager without the survey.
        self.stream = Stream()
        self.record = True
        self._min_alt = config.limits.min_alt_deg + self.settings.alt_margin_deg
        self.max_mag = (max((s.label_limit_mag for s in config.spectrographs), default=21.5)
                        + self.settings.faint_margin_mag)
        self._reward = np.array([self.settings.reward.get(c, 0.0) for c in CLASSES])
        # Operator requests (brain.planner.tools): offered first and taken whenever observable;
        # cancelled objects are never offered to the policy.
        self.requested: list[int] = []
        self.vetoed: set[int] = set()

    # After a restart ---------------------------------------------------------------
    def restore(self, spectra: list[dict], object_ids: np.ndarray, date: str) -> int:
        """Take back the spectra an earlier daemon session commanded (from its journal):
        their objects are not offered again, labels are known, tonight's spectra count
        against each telescope's nightly budget, and target ids continue after the last.
        ``spectra``: dicts with ``device, target_id, t_sent, t_end, status, label,
        night`` (the night's date); ``object_ids``: each one's object in the rebuilt
        association, -1 where none matches. A spectrum that failed gives its object
        back. Returns how many objects are taken."""
        top = 0
        for sp, oid in zip(spectra, object_ids, strict=True):
            tail = str(sp["target_id"]).rsplit("-", 1)[-1]
            if tail.isdigit():
                top = max(top, int(tail))
            st = self.specs.get(sp["device"])
            status = {"done": "done", "failed": "failed", "refused": "failed"}.get(
                sp["status"], "unknown")
            spent = max(0.0, float(sp["t_end"] or sp["t_sent"]) - sp["t_sent"])
            if st is not None and status != "failed":
                st.season_used_s += spent
                if sp["night"] == date:
                    st.used_s += spent
            if oid < 0:
                continue
            rec = FollowupRecord(sp["target_id"], int(oid), sp["device"], sp["t_sent"],
                                 sp["t_sent"], float(sp["t_end"] or sp["t_sent"]),
                                 math.nan, "unknown", math.nan, sp.get("label"))
            rec.status = status
            self.records[sp["target_id"]] = rec
            if status != "failed":
                self.taken.add(int(oid))
            if sp.get("label"):
                self.labels[int(oid)] = sp["label"]
        self._seq = itertools.count(top + 1)
        self._date = date
        return len(self.taken)

    def request(self, object_id: int) -> None:
        self.vetoed.discard(object_id)
        if object_id not in self.requested and object_id not in self.taken:
            self.requested.append(object_id)

    def cancel(self, object_id: int) -> None:
        if object_id in self.requested:
            self.requested.remove(object_id)
        self.vetoed.add(object_id)

    # Inputs ------------------------------------------------------------------------
    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if self.record:
            self.stream.snapshots.append(snapshot)

    def on_reply(self, ev: Done | Failed) -> None:
        tid = self._cmd_target.pop(ev.cmd_id, None)
        if tid is None:
            return  # open/close/park acknowledgements, or a reply after an abort
        rec = self.records[tid]
        st = self.specs[rec.telescope]
        planned_end = st.busy["t_end"]  # a reply with a known command: its spectrum is busy
        st.busy = None
        if isinstance(ev, Done):
            rec.status = "done"
            rec.t_start = float(ev.result.get("t_start", rec.t_start))
            rec.t_end = float(ev.result.get("t_end", ev.t))
            rec.label = ev.result.get("label")
            rec.before_peak = bool(ev.result.get("before_peak", False))
            if rec.label is not None:
                self.labels[rec.object_id] = rec.label
        else:
            # Refused (below the limit, busy, closed): the time was not spent, and the
            # object is not offered again.
            rec.status, rec.t_end = "failed", ev.t
            st.used_s -= max(0.0, planned_end - ev.t)
            st.season_used_s -= max(0.0, planned_end - ev.t)
            st.next_decision = ev.t

    # Every minute -------------------------------------------------------------------
    def tick(self, t: float, open_sites: dict[str, bool], night) -> list[Command]:
        cmds = self.open_close(t, open_sites, night)
        gen = self.decisions(t, night)
        try:
            _dev, table, _rows = next(gen)
            while True:
                _dev, table, _rows = gen.send(self.policy.choose(table))
        except StopIteration as stop:
            return cmds + stop.value

    def decisions(self, t: float, night):
        """For each free telescope with candidates, yield (device, table, rows) and take
        the policy's choice sent back; returns the commands. The shells drive it with
        their policy (``tick``); ``FollowupLoop`` lets an agent answer instead."""
        cmds: list[Command] = []
        for dev in self.ready(t):
            table, rows = self.candidates_for(dev, t, night)
            if table.n and int(table.object_id[0]) in self.requested:
                choice = 0  # the operator's request goes first (candidates_for)
                self.requested.remove(int(table.object_id[0]))
            else:
                choice = (yield dev, table, rows) if table.n else WAIT
            cmds += self.act(dev, t, table, rows, choice)
        return cmds

    def open_close(self, t: float, open_sites: dict[str, bool], night) -> list[Command]:
        if night.date != self._date:
            self._date = night.date
            for st in self.specs.values():
                st.used_s = 0.0
        if self.record:
            self.stream.ticks.append((t, night.date, tuple(
                bool(open_sites.get(st.site, False)) for st in self.specs.values())))
        cmds = []
        for st in self.specs.values():
            want = bool(open_sites.get(st.site, False))
            if want and not st.is_open:
                st.is_open = True
                st.next_decision = -math.inf
                cmds.append(Command(st.device, "open", deadline=t + 120))
            elif st.is_open and not want:
                st.is_open = False
                if st.busy is not None:
                    rec = self.records[st.busy["target_id"]]
                    rec.status, rec.t_end = "aborted", t
                    st.used_s -= max(0.0, st.busy["t_end"] - t)
                    st.season_used_s -= max(0.0, st.busy["t_end"] - t)
                    self._cmd_target.pop(st.busy["cmd_id"], None)
                    self.taken.discard(rec.object_id)  # may be tried again
                    st.busy = None
                cmds += [Command(st.device, n, deadline=t + 180) for n in ("close", "park")]
                st.ra_deg = st.dec_deg = None
        return cmds

    def ready(self, t: float) -> list[str]:
        return [d for d, st in self.specs.items()
                if st.is_open and st.busy is None and t >= st.next_decision
                and min(self._budget_left(st)) > 0]

    def _budget_left(self, st) -> tuple[float, float]:
        """Seconds left of the telescope's budget tonight and of its season's (inf:
        no such budget)."""
        night, season = self.settings.max_hours_per_night, self.settings.max_hours_per_season
        return (math.inf if night is None else night * 3600 - st.used_s,
                math.inf if season is None else season * 3600 - st.season_used_s)

    def candidates_for(self, device: str, t: float, night):
        """The CandidateTable of ``device`` at ``t`` and the snapshot rows behind it.

        A policy with a ``max_candidates`` attribute is offered only that many: the
        observable candidates of highest priority (expected reward x label chance per
        hour of acquisition and exposure, which does not depend on the telescope)."""
        st = self.specs[device]
        eph = night.sites[st.site]
        snap = self.snapshot
        night_left = eph.dark_left_s(t, self.config.limits.max_sun_alt_deg)
        budget_left, season_left = self._budget_left(st)
        if snap is None or snap.n == 0:
            return (empty_table(night_left, budget_left, season_left),
                    np.zeros(0, dtype=np.int64))
        # Observable means finished within both budgets.
        budget_left = min(budget_left, season_left)
        limit = getattr(self.policy, "max_candidates", None)
        order = self._priority_order(st.spec) if limit else np.arange(snap.n)
        if self.taken or self.vetoed:
            order = order[~np.isin(snap.object_id[order],
                                   np.fromiter(self.taken | self.vetoed, np.int64))]
        if self.requested:  # operator requests first, in the order asked
            ids = snap.object_id[order]
            first = [np.flatnonzero(ids == o) for o in self.requested]
            first = np.concatenate(first) if first else np.zeros(0, dtype=np.int64)
            order = np.concatenate([order[first], np.delete(order, first)])
        if limit:
            # Scan in priority order until enough observable candidates are found.
            found, count, a, step = [], 0, 0, 8 * limit
            while a < order.size and count < limit:
                rows = self._observable(st, eph, t, order[a:a + step], night_left, budget_left)
                found.append(rows)
                count += rows.size
                a, step = a + step, 2 * step
            rows = np.concatenate(found)[:limit] if found else order[:0]
        else:
            rows = self._observable(st, eph, t, order, night_left, budget_left)
        return self._table(st, eph, t, rows, night_left, self._budget_left(st)), rows

    def _priority_order(self, spec) -> np.ndarray:
        snap = self.snapshot
        if getattr(self, "_order_snap", None) is not snap:
            self._order_snap, self._orders = snap, {}
        key = (spec.base_exposure_s, spec.reference_mag, spec.min_exposure_s,
               spec.max_exposure_s, spec.acquisition_s, spec.label_limit_mag)
        if key not in self._orders:
            cost = exposure_s(spec, snap.mag) + spec.acquisition_s
            prio = (snap.prob.astype(np.float64) @ self._reward) * label_probability(
                snap.mag, spec.label_limit_mag) / cost
            # As np.argsort(-prio, kind="stable"), sorting only the rows worth anything
            # (most are too faint for a label): zeros, then NaNs, keep their order.
            pos = np.flatnonzero(prio > 0)
            self._orders[key] = np.concatenate([pos[np.argsort(-prio[pos], kind="stable")],
                                                np.flatnonzero(prio == 0),
                                                np.flatnonzero(np.isnan(prio))])
        return self._orders[key]

    def _move_s(self, st, eph, t, ra, dec) -> np.ndarray:
        """Slew + settle + acquisition (s) from the telescope's pointing (zenith: parked)."""
        if st.ra_deg is None:
            ra0, dec0 = float(eph.lst_deg(t)), eph.site.lat_deg
        else:
            ra0, dec0 = st.ra_deg, st.dec_deg
        here = unit_vectors(np.array([ra0]), np.array([dec0]))[0]
        sep = np.degrees(np.arccos(np.clip(unit_vectors(ra, dec) @ here, -1, 1)))
        return move_time_s(sep, SPEC_MOUNT) + st.spec.acquisition_s

    def _observable(self, st, eph, t, rows, night_left, budget_left) -> np.ndarray:
        """The snapshot rows this telescope can observe now: above the limit (with the
        margin) from the end of acquisition to the end of the exposure, away from a risen
        moon, finished before dawn and within the budget."""
        if rows.size == 0:
            return rows
        snap = self.snapshot
        ra, dec = snap.ra_deg[rows], snap.dec_deg[rows]
        t_start = t + self._move_s(st, eph, t, ra, dec)
        t_end = t_start + exposure_s(st.spec, snap.mag[rows])
        lim = self._min_alt
        ok = ((target_alt_deg(eph, ra, dec, t_start) >= lim)
              & (target_alt_deg(eph, ra, dec, t_end) >= lim)
              & (t_end <= t + min(night_left, budget_left)))
        if eph.moon_alt(t) > 0:
            ok &= np.degrees(np.arccos(np.clip(unit_vectors(ra, dec) @ eph.moon_vec(t), -1, 1))) \
                >= self.config.limits.min_moon_sep_deg
        return rows[ok]

    def _table(self, st, eph, t, rows, night_left, budgets) -> CandidateTable:
        budget_left, season_left = budgets
        if rows.size == 0:
            return empty_table(night_left, budget_left, season_left)
        snap = self.snapshot
        ra, dec, mag = snap.ra_deg[rows], snap.dec_deg[rows], snap.mag[rows]
        prob = snap.prob[rows].astype(float)  # stored as float16 (log(1e-12) is not)
        now_mjd = float(unix_to_mjd(t))
        first = snap.first_mjd[rows]
        fade = np.maximum(mag.astype(float) - snap.peak_mag[rows], 0.0)
        return CandidateTable(
            object_id=snap.object_id[rows], ra_deg=ra, dec_deg=dec, mag=mag,
            slope_mag_per_day=snap.slope_mag_per_day[rows],
            age_days=np.maximum(now_mjd - first, 0.0),
            n_det=snap.n_det[rows], n_nights=snap.n_nights[rows], prob=prob,
            alt_deg=target_alt_deg(eph, ra, dec, t), move_s=self._move_s(st, eph, t, ra, dec),
            exposure_s=exposure_s(st.spec, mag), window_s=self._window(eph, ra, dec, t,
                                                                       night_left),
            p_label=label_probability(mag, st.spec.label_limit_mag),
            expected_reward=prob @ self._reward, night_left_s=night_left,
            budget_left_s=budget_left,
            nights_since_first=np.maximum(local_night(now_mjd, eph.site.lon_deg)
                                          - local_night(first, eph.site.lon_deg), 0),
            fade_mag=fade, peak_passed=peak_passed(fade, snap.fade_err[rows]),
            season_left_s=season_left)

    def act(self, device: str, t: float, table: CandidateTable, rows, choice: int
            ) -> list[Command]:
        st = self.specs[device]
        self.n_decisions += 1
        if choice == WAIT or not (0 <= choice < table.n):
            st.next_decision = t + self.settings.wait_s
            return []
        snap = self.snapshot
        row = rows[choice]
        oid = int(snap.object_id[row])
        tid = f"{device}-{next(self._seq):06d}"
        seconds = float(table.exposure_s[choice])
        t_end = t + float(table.move_s[choice]) + seconds
        k = int(np.argmax(snap.prob[row]))
        cmd = Command(device, "spectrum",
                      {"ra_deg": float(snap.ra_deg[row]), "dec_deg": float(snap.dec_deg[row]),
                       "seconds": seconds, "target_id": tid, "object_id": f"o{oid:07d}"},
                      deadline=t_end + 600)
        self.records[tid] = FollowupRecord(tid, oid, device, t, t, t_end,
                                           float(snap.mag[row]), CLASSES[k],
                                           float(snap.prob[row, k]))
        self._cmd_target[cmd.cmd_id] = tid
        st.busy = {"target_id": tid, "cmd_id": cmd.cmd_id, "t_end": t_end}
        st.used_s += t_end - t
        st.season_used_s += t_end - t
        st.ra_deg, st.dec_deg = float(snap.ra_deg[row]), float(snap.dec_deg[row])
        self.taken.add(oid)
        return [cmd]

    # Sky -----------------------------------------------------------------------------
    def _window(self, eph, ra, dec, t, night_left) -> np.ndarray:
        """Seconds each target stays above the altitude limit tonight (from its hour
        angle: the target sets when it reaches the hour angle of the limit)."""
        lat = eph.lat_rad
        d = np.radians(dec)
        cos_h = ((math.sin(math.radians(self._min_alt)) - math.sin(lat) * np.sin(d))
                 / np.maximum(math.cos(lat) * np.cos(d), 1e-9))
        h_lim = np.degrees(np.arccos(np.clip(cos_h, -1, 1)))  # 180: never sets
        ha = (eph.lst_deg(t) - ra + 180.0) % 360.0 - 180.0
        left = np.where(h_lim >= 180.0, np.inf, (h_lim - ha) / SIDEREAL_DEG_S)
        return np.clip(left, 0.0, night_left)


def empty_table(night_left: float, budget_left: float,
                season_left: float = math.inf) -> CandidateTable:
    z = np.zeros(0)
    return CandidateTable(z.astype(np.int64), z, z, z, z, z, z, z, np.zeros((0, len(CLASSES))),
                          z, z, z, z, z, z, night_left, budget_left,
                          season_left_s=season_left)


def local_night(mjd, lon_deg: float) -> np.ndarray:
    """The local night an MJD belongs to, as a day number (noon to noon, local mean
    solar time): two times on the same night share it."""
    return np.floor(np.asarray(mjd, dtype=float) + lon_deg / 360.0 - 0.5).astype(np.int64)


def followup_rows(manager: FollowupManager, log: list[dict]) -> list[dict]:
    """One row per finished spectrum (followups.csv), the brain's record joined with the
    simulator's truth, and its science reward."""
    truth = {e["target_id"]: e for e in log}
    s = manager.settings
    rows = []
    for tid, rec in manager.records.items():
        if rec.status != "done":
            continue
        e = truth.get(tid, {})
        true_class = e.get("true_class")
        before = bool(e.get("before_peak", False))
        rows.append({"target_id": tid, "object_id": f"o{rec.object_id:07d}",
                     "telescope": rec.telescope, "t_start": rec.t_start, "t_end": rec.t_end,
                     "mag": rec.mag, "predicted_class": rec.predicted_class,
                     "p_predicted": rec.p_predicted,
                     "true_class": true_class if true_class is not None else "bogus",
                     "label": rec.label or "", "before_peak": before,
                     "reward": science_reward(true_class, rec.label, before, s.reward,
                                              s.before_peak_factor),
                     "_hours": (rec.t_end - rec.t_cmd) / 3600.0})
    return rows


def followup_summary(manager: FollowupManager, rows: list[dict], ticks=None) -> dict:
    """The ``followup`` keys of metrics.json (``ticks``: the stream's minutes, when the
    manager re-ran over a recorded stream instead of recording one)."""
    hours = sum(r["_hours"] for r in rows) + sum(
        (rec.t_end - rec.t_cmd) / 3600.0 for rec in manager.records.values()
        if rec.status == "aborted")
    reward = float(sum(r["reward"] for r in rows))
    dark_h = (manager.stream.open_hours() if ticks is None
              else sum(sum(o) for _t, _d, o in ticks) / 60.0)
    # Confirmed as predicted: the spectrum's label is the class the brain predicted. Apart
    # from it, labels matching the simulator's truth (the rows carry it here): that is
    # the simulated spectrograph's identification, not the classifier's (docs/safety.md).
    confirmed: dict[str, int] = {}
    for r in rows:
        if r["label"] and r["label"] == r["predicted_class"]:
            confirmed[r["label"]] = confirmed.get(r["label"], 0) + 1
    statuses = [rec.status for rec in manager.records.values()]
    return {"spectra": len(rows), "hours": hours, "reward": reward,
            "reward_per_hour": reward / hours if hours > 0 else None,
            "confirmed": dict(sorted(confirmed.items())),
            "labelled": sum(1 for r in rows if r["label"]),
            "labels_matching_truth": sum(1 for r in rows
                                         if r["label"] and r["label"] == r["true_class"]),
            "before_peak": sum(1 for r in rows if r["before_peak"] and r["reward"] > 0),
            "aborted": statuses.count("aborted"), "refused": statuses.count("failed"),
            "open_hours": dark_h,
            "reward_per_open_hour": reward / dark_h if dark_h > 0 else None,
            "decisions": manager.n_decisions}
