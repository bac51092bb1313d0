"""The survey scheduler's rules, one at a time, on the real sky of 2026-12-15.

Each test sets up the per-field memory by hand so the expected choice is known, then
asks ``SurveyScheduler.choose`` as the core does when a group falls idle.
"""

from __future__ import annotations

import numpy as np
import pytest

from brain.config import load_config, with_climate
from brain.core.braincore import BrainCore
from brain.core.events import Done, Tick, Weather
from brain.core.survey import NO_GROUP, SurveyScheduler
from observatory.sky import FieldGrid
from observatory.visibility import NightCache


@pytest.fixture(scope="module")
def setup():
    config = with_climate(load_config(), "clear")
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid)
    night, sky = cache.get("2026-12-15")
    t = night.all_dark_interval()[0] + 3600.0  # every site dark
    return config, grid, cache, sky, t


def _group(config, site: str, number: int = 1) -> int:
    return [g.name for g in config.groups].index(f"{site}.g{number:02d}")


def _visible(sky, site, t, min_alt=40.0):
    return np.flatnonzero(sky.alt_deg(site, t) > min_alt)


def test_choice_is_feasible_and_near(setup):
    """From a pointing among fresh fields, the group takes a neighbouring field that is
    above the altitude limit for its whole exposure."""
    config, grid, _cache, sky, t = setup
    sched = SurveyScheduler(config, grid.size)
    g = _group(config, "lh")
    start = _visible(sky, "lh", t, 60.0)[0]
    f = sched.choose(sky, g, "lh", t, grid.xyz[start])
    assert f is not None
    sep = np.degrees(np.arccos(np.clip(grid.xyz[f] @ grid.xyz[start], -1, 1)))
    assert sep < 1.5 * grid.side_deg  # a neighbour, not a jump across the sky
    for tt in (t, t + 60):
        assert sky.alt_deg("lh", tt, np.array([f]))[0] >= config.limits.min_alt_deg


def test_no_early_revisit_while_alternatives_exist(setup):
    """A field visited 10 minutes ago is not taken again while fresh fields remain,
    even if it is the nearest one (it would count twice in one coverage window)."""
    config, grid, _cache, sky, t = setup
    sched = SurveyScheduler(config, grid.size)
    g = _group(config, "xl")
    here = _visible(sky, "xl", t, 60.0)[0]
    sched.add_observation(here, g, t - 600)
    assert sched.choose(sky, g, "xl", t, grid.xyz[here]) != here


def test_due_field_beats_new_neighbour(setup):
    """A field of the group's own loop that is due (31 min) wins over a never-visited
    field at the same distance: cadence first."""
    config, grid, _cache, sky, t = setup
    sched = SurveyScheduler(config, grid.size)
    g = _group(config, "xl")
    here = _visible(sky, "xl", t, 60.0)[0]
    chosen_fresh = sched.choose(sky, g, "xl", t, grid.xyz[here])
    sched.add_observation(chosen_fresh, g, t - 31 * 60)
    assert sched.choose(sky, g, "xl", t, grid.xyz[here]) == chosen_fresh


def test_other_groups_reserved_fields_are_not_taken(setup):
    """A field another group visited 20 minutes ago stays theirs."""
    config, grid, _cache, sky, t = setup
    sched = SurveyScheduler(config, grid.size)
    a, b = _group(config, "xl", 1), _group(config, "xl", 2)
    here = _visible(sky, "xl", t, 60.0)[0]
    first = sched.choose(sky, b, "xl", t, grid.xyz[here])
    sched.add_observation(first, a, t - 20 * 60)
    assert sched.choose(sky, b, "xl", t, grid.xyz[here]) != first


def test_reservation_lapses_when_owner_cannot_see_the_field(setup):
    """A field reserved by a group at a site where it has set passes at once to a
    group at a site that still sees it."""
    config, grid, _cache, sky, t = setup
    sched = SurveyScheduler(config, grid.size)
    owner, taker = _group(config, "xl"), _group(config, "mz")
    below_xl = sky.alt_deg("xl", t) < config.limits.min_alt_deg - 5
    high_mz = (sky.alt_deg("mz", t) > 50) & (sky.moon_sep_deg("mz", t) > 35)
    candidates = np.flatnonzero(below_xl & high_mz)
    assert candidates.size > 0
    f = int(candidates[0])
    sched.state.last_visit[:] = t - 600  # everything else was just visited: not due
    sched.state.last_group[:] = taker
    sched.add_observation(f, owner, t - 31 * 60)  # due, and xl cannot see it any more
    assert sched.choose(sky, taker, "mz", t, grid.xyz[f]) == f
    sched.state.last_group[f] = _group(config, "mz", 2)  # an owner that still sees it
    assert sched.choose(sky, taker, "mz", t, grid.xyz[f]) != f


def test_group_retraces_its_loop(setup):
    """After field p the group goes where it went after p on its previous pass, when
    that field is due, even if another due field is as near."""
    config, grid, _cache, sky, t = setup
    sched = SurveyScheduler(config, grid.size)
    g = _group(config, "lh")
    vis = _visible(sky, "lh", t, 55.0)
    p = int(vis[len(vis) // 2])
    seps = np.degrees(np.arccos(np.clip(grid.xyz[vis] @ grid.xyz[p], -1, 1)))
    neighbours = vis[(seps > 0.5) & (seps < 4.5)]
    assert neighbours.size >= 2
    sched.state.last_visit[:] = t - 600
    sched.state.last_group[:] = g
    for n in neighbours:  # every neighbour due
        sched.state.last_visit[n] = t - 31 * 60
    default = sched.choose(sky, g, "lh", t, grid.xyz[p])  # no memory of a path yet
    later = int(next(n for n in neighbours[::-1] if n != default))
    sched.state.successor[g, p] = later
    sched.state.last_field[g] = p
    assert sched.choose(sky, g, "lh", t, grid.xyz[p]) == later


def test_closed_site_releases_its_fields(setup):
    """When a site closes for weather its groups' fields are freed at once for the
    other sites (rebalancing), and the site's telescopes are closed and parked."""
    config, grid, cache, _sky, t = setup
    core = BrainCore(config, grid, cache)
    wx = {"wind_mps": 3.0, "humidity": 0.3, "rain": False, "cloud": 0.0,
          "seeing_arcsec": 1.0, "dew_margin_c": 10.0}
    for s in config.sites:
        core.handle(Weather(t, s.id, **wx))
    cmds = core.handle(Tick(t))
    slews = [c for c in cmds if c.name == "slew" and c.device.startswith("xl.")]
    assert len(slews) == 18  # six groups x three bands
    for c in slews:  # the slews finish; the groups expose; the exposures finish
        for ex in core.handle(Done(t + 10, c.device, c.cmd_id, {})):
            core.handle(Done(t + 40, ex.device, ex.cmd_id, {"t_start": t + 10,
                                                            "t_end": t + 40}))
    xl_groups = [g.index for g in core.groups if g.site == "xl"]
    owned = np.isin(core.scheduler.state.last_group, xl_groups)
    assert owned.sum() >= 6
    cmds = core.handle(Weather(t + 60, "xl", **dict(wx, wind_mps=25.0)))
    names = {(c.device, c.name) for c in cmds}
    assert ("xl.g01.g", "close") in names and ("xl.g06.i", "park") in names
    assert not core.sites["xl"].open
    assert core.refusals["wind"] == 1
    assert not np.isin(core.scheduler.state.last_group, xl_groups).any()
    assert (core.scheduler.state.claimed_by[owned] == NO_GROUP).all()
