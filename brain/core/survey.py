"""The stare-survey scheduler: feature-based scoring over every field at once.

In the spirit of Rubin's Feature-Based Scheduler: each basis function returns one value
per candidate field (``-inf`` = infeasible) and the group goes to the field with the
highest sum. Masks (hard constraints) and features (soft preferences) are small classes
with one method, so new behaviour is a new class rather than a new ``if``.

The features that make a stare survey: the time since a field's last three-band visit
against the cadence goal (due fields first, early revisits penalised), the move time
from the group's pointing (so groups sweep contiguous blocks), airmass and depth, and a
penalty on new fields that will set before they can be revisited. Fields recently
visited by another group stay reserved to it (no field taken twice in a window); when a
site closes its groups' reservations are released, so the other sites rebalance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from brain.config import BrainConfig
from observatory.depth import limiting_mag
from observatory.mount import move_time_s
from observatory.visibility import FieldSky

NO_GROUP = -1


@dataclass
class Decision:
    """What a basis function sees: one group, one moment, the candidate fields."""

    t: float  # now (unix s)
    group: int
    site: str
    idx: np.ndarray  # candidate field indices
    move_s: np.ndarray  # move time to each candidate (s), slew + settle
    t_start: np.ndarray  # predicted shutter open (unix s)
    t_end: np.ndarray  # predicted shutter close (unix s)
    sin_alt_start: np.ndarray  # sine of the altitude at shutter open


class SurveyState:
    """Per-field memory of the survey: last three-band visit, who made it, claims."""

    def __init__(self, n_fields: int, n_groups: int):
        self.last_visit = np.full(n_fields, -np.inf)
        self.last_group = np.full(n_fields, NO_GROUP, dtype=np.int32)
        self.claimed_by = np.full(n_fields, NO_GROUP, dtype=np.int32)
        # Each group's path: the field it finished last, and for each field the one it
        # went to next on its previous pass.
        self.last_field = np.full(n_groups, -1, dtype=np.int32)
        self.successor = np.full((n_groups, n_fields), -1, dtype=np.int32)


# Masks ------------------------------------------------------------------------------
class FeasibilityMask:
    """Altitude at shutter open and close, sun at close, moon separation: the limits."""

    def __init__(self, config: BrainConfig):
        self.lim = config.limits
        self.margin = config.scheduler.alt_margin_deg

    def __call__(self, d: Decision, sky: FieldSky, state: SurveyState) -> np.ndarray:
        min_sin = math.sin(math.radians(self.lim.min_alt_deg + self.margin))
        ok = (d.sin_alt_start >= min_sin) & (sky.sin_alt(d.site, d.t_end, d.idx) >= min_sin)
        eph = sky.night.sites[d.site]
        if not eph.is_dark(float(d.t_end.max()), self.lim.max_sun_alt_deg):
            ok[:] = False
        t_mid = float(0.5 * (d.t_start.min() + d.t_end.max()))
        ok &= sky.moon_sep_deg(d.site, t_mid, d.idx) >= self.lim.min_moon_sep_deg + 0.05
        return np.where(ok, 0.0, -np.inf)


class ClaimMask:
    """Fields in flight for another group, or recently visited by one, are not ours.

    A reservation holds only while the owner's site can still observe the field: a
    field that set for one site passes at once to a site further west that still sees
    it, instead of waiting out the reservation unobserved."""

    def __init__(self, config: BrainConfig):
        self.reserve_s = config.scheduler.ownership_factor * config.survey.cadence_min * 60
        self.sites = [x.id for x in config.sites]
        self.group_site = np.array([self.sites.index(g.site) for g in config.groups])
        self.min_sin = math.sin(math.radians(config.limits.min_alt_deg))

    def __call__(self, d: Decision, sky: FieldSky, state: SurveyState) -> np.ndarray:
        claimed = state.claimed_by[d.idx]
        owner = state.last_group[d.idx]
        held = ((d.t - state.last_visit[d.idx]) < self.reserve_s) & (owner != NO_GROUP) & (
            owner != d.group)
        where = np.flatnonzero(held)
        if where.size:
            owner_site = self.group_site[owner[where]]
            for k, site in enumerate(self.sites):
                sel = where[owner_site == k]
                if sel.size and site != d.site:
                    held[sel] = sky.sin_alt(site, d.t, d.idx[sel]) >= self.min_sin
        taken = ((claimed != NO_GROUP) & (claimed != d.group)) | held
        return np.where(taken, -np.inf, 0.0)


# Features ---------------------------------------------------------------------------
class SlewtimeBasisFunction:
    def __init__(self, config: BrainConfig):
        self.w = config.scheduler.slew_weight_per_s

    def __call__(self, d, sky, state):
        return -self.w * d.move_s


class CadenceBasisFunction:
    """Due fields score ``due_weight`` plus ``overdue_weight`` per cadence overdue; a
    revisit before the goal costs ``early_penalty`` and more the earlier it is (a revisit
    at least one goal later never falls in the same coverage window, so none is wasted).
    Never-visited fields (or ones left for over two cadences) score ``new_weight`` while
    the group's block (the fields it holds reserved) is smaller than one cadence of
    exposures; beyond that a new
    field costs ``block_penalty``, so the block stops growing and revisits stay on goal."""

    def __init__(self, config: BrainConfig):
        s = config.scheduler
        self.goal_s = config.survey.cadence_min * 60
        self.due, self.new, self.early = s.due_weight, s.new_weight, s.early_penalty
        self.overdue, self.block_penalty = s.overdue_weight, s.block_penalty
        side = math.sqrt(config.camera.fov_deg2)
        cycle = (config.survey.exposure_s
                 + float(move_time_s(side, config.mount)))
        self.block_size = math.ceil(self.goal_s / cycle)
        self.reserve_s = s.ownership_factor * self.goal_s

    def __call__(self, d, sky, state):
        frac = (d.t_start - state.last_visit[d.idx]) / self.goal_s
        score = np.where(frac >= 1.0, self.due + self.overdue * np.minimum(frac - 1.0, 1.0),
                         -self.early * (2.0 - frac))
        block = np.count_nonzero((state.last_group == d.group)
                                 & (d.t - state.last_visit < self.reserve_s))
        new = self.new if block < self.block_size else self.new - self.block_penalty
        return np.where(frac > 2.0, new, score)


class PathBasisFunction:
    """Retrace the loop: the field a group took after its current field on its previous
    pass scores ``path_weight``. Groups then sweep the same loop every cycle, with
    adjacent moves and revisits just after the goal (the early-revisit penalty makes
    the loop grow until one pass takes a full cadence)."""

    def __init__(self, config: BrainConfig):
        self.w = config.scheduler.path_weight

    def __call__(self, d, sky, state):
        last = state.last_field[d.group]
        if last < 0:
            return 0.0
        nxt = state.successor[d.group, last]
        return np.where(d.idx == nxt, self.w, 0.0) if nxt >= 0 else 0.0


class AirmassBasisFunction:
    def __init__(self, config: BrainConfig):
        self.w = config.scheduler.airmass_weight

    def __call__(self, d, sky, state):
        return -self.w * (1.0 / np.maximum(d.sin_alt_start, 0.05) - 1.0)


class SettingBasisFunction:
    """A new field that will be below the limit one cadence from now cannot be
    revisited: it is a poor start for a block."""

    def __init__(self, config: BrainConfig):
        self.w = config.scheduler.setting_penalty
        self.goal_s = config.survey.cadence_min * 60
        self.min_sin = math.sin(math.radians(config.limits.min_alt_deg))

    def __call__(self, d, sky, state):
        later = sky.sin_alt(d.site, d.t + self.goal_s, d.idx) < self.min_sin
        return np.where(later & ~np.isfinite(state.last_visit[d.idx]), -self.w, 0.0)


class DepthBasisFunction:
    """r-band 5-sigma depth (moon, airmass, seeing, cloud) relative to the dark-zenith
    depth, refreshed per site every few minutes (depth changes slowly)."""

    REFRESH_S = 300.0

    def __init__(self, config: BrainConfig):
        self.config = config
        self.w = config.scheduler.depth_weight
        self._cache: dict[str, tuple[float, np.ndarray]] = {}
        self.conditions: dict[str, tuple[float, float]] = {}  # site -> (seeing, cloud)

    def __call__(self, d, sky, state):
        t0, m5 = self._cache.get(d.site, (-np.inf, None))
        if m5 is None or d.t - t0 > self.REFRESH_S or len(m5) != sky.grid.size:
            seeing, cloud = self.conditions.get(d.site, (1.0, 0.0))
            eph = sky.night.sites[d.site]
            m5 = limiting_mag(self.config.depth, "r", sky.alt_deg(d.site, d.t),
                              eph.moon_alt(d.t), sky.moon_sep_deg(d.site, d.t),
                              eph.moon_phase_angle(d.t), seeing, cloud,
                              self.config.survey.exposure_s)
            self._cache[d.site] = (d.t, m5)
        return self.w * (m5[d.idx] - self.config.depth.m5_zenith_dark["r"])


class SurveyScheduler:
    """Chooses a group's next field. Pure numpy; knows nothing of sockets or shells."""

    def __init__(self, config: BrainConfig, n_fields: int):
        self.config = config
        self.state = SurveyState(n_fields, len(config.groups))
        self.masks = [FeasibilityMask(config), ClaimMask(config)]
        self.region: np.ndarray | None = None  # operator's survey region (field mask)
        self.depth = DepthBasisFunction(config)
        self.features = [SlewtimeBasisFunction(config), CadenceBasisFunction(config),
                         PathBasisFunction(config),
                         AirmassBasisFunction(config), SettingBasisFunction(config),
                         self.depth]
        self._coarse_sin = math.sin(math.radians(config.limits.min_alt_deg - 3.0))
        self._coarse: dict[str, tuple[float, int, np.ndarray]] = {}

    COARSE_S = 300.0  # fields rise at most 1.25 deg in this time: a 3 deg margin is safe

    def _candidates(self, sky: FieldSky, site: str, t: float) -> np.ndarray:
        """Fields near or above the altitude limit, recomputed every ``COARSE_S``."""
        bucket = math.floor(t / self.COARSE_S)
        cached = self._coarse.get(site)
        if cached is None or cached[0] != bucket or cached[1] != id(sky):
            idx = np.flatnonzero(sky.sin_alt(site, bucket * self.COARSE_S) > self._coarse_sin)
            cached = (bucket, id(sky), idx)
            self._coarse[site] = cached
        return cached[2]

    def choose(self, sky: FieldSky, group: int, site: str, t: float,
               pointing_xyz: np.ndarray | None) -> int | None:
        """The best field for ``group`` at ``t`` (unix s), or None if none is feasible."""
        idx = self._candidates(sky, site, t)
        if self.region is not None:
            idx = idx[self.region[idx]]
        if idx.size == 0:
            return None
        if pointing_xyz is None:
            move = np.full(idx.size, 60.0)  # from park: a long move whatever the field
        else:
            cos_sep = np.clip(sky.grid_xyz[idx] @ pointing_xyz, -1.0, 1.0)
            move = move_time_s(np.degrees(np.arccos(cos_sep)), self.config.mount)
        t_start = t + np.maximum(move, self.config.camera.readout_s)
        d = Decision(t, group, site, idx, move, t_start, t_start + self.config.survey.exposure_s,
                     sky.sin_alt(site, t_start, idx))
        score = np.zeros(idx.size)
        for mask in self.masks:
            score += mask(d, sky, self.state)
            if not np.isfinite(score).any():
                return None
        for feature in self.features:
            score += feature(d, sky, self.state)
        best = int(np.argmax(score))
        return int(idx[best]) if np.isfinite(score[best]) else None

    # Bookkeeping ------------------------------------------------------------------
    def claim(self, field: int, group: int) -> None:
        self.state.claimed_by[field] = group

    def unclaim(self, field: int) -> None:
        self.state.claimed_by[field] = NO_GROUP

    def add_observation(self, field: int, group: int, t_start: float) -> None:
        s = self.state
        s.last_visit[field] = t_start
        s.last_group[field] = group
        s.claimed_by[field] = NO_GROUP
        if s.last_field[group] >= 0:
            s.successor[group, s.last_field[group]] = field
        s.last_field[group] = field

    def release(self, groups: list[int]) -> None:
        """Forget these groups' claims and reservations (their site closed)."""
        s = self.state
        gone = np.isin(s.last_group, groups)
        s.last_group[gone] = NO_GROUP
        s.last_field[groups] = -1
        s.successor[groups] = -1
        s.claimed_by[np.isin(s.claimed_by, groups)] = NO_GROUP
