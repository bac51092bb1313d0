"""The brain core's interface, driven directly, with no shell: ``handle(event) ->
commands`` and the side door the shells use (docs/architecture.md, "The core's
interface"): ``ensure_night``, ``guard`` and ``refuse``, ``review_safety``,
``dawn_close``, ``plan_state``, ``restore`` and the classification offload. And the
fast shell's dispatcher, which sends every command through the same guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brain.config import load_config, with_climate
from brain.core.association import DetectionBatch
from brain.core.braincore import BrainCore
from brain.core.events import Command, Done, Tick, Weather
from brain.core.operator import PlanState
from brain.shells.fast import Dispatcher
from observatory.sky import FieldGrid
from observatory.visibility import NightCache
from simulator.world import World

DATE = "2026-12-15"
CALM = dict(wind_mps=3.0, humidity=0.3, rain=False, cloud=0.0, seeing_arcsec=1.0,
            dew_margin_c=5.0)


@pytest.fixture(scope="module")
def sky():
    config = with_climate(load_config(), "clear")
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid)
    night, _sky = cache.get(DATE)
    t_dark = night.all_dark_interval()[0] + 3600.0  # every site dark
    return config, grid, cache, night, t_dark


@pytest.fixture
def core(sky):
    config, grid, cache, _night, _t = sky
    return BrainCore(config, grid=grid, nights=cache)


def _open_xl(core, t) -> list[Command]:
    """Calm weather at Xinglong in the dark: the core opens every group there."""
    return core.handle(Weather(t, "xl", **CALM))


def _finish(core, cmds, t) -> list[Command]:
    """Every command of ``cmds`` reported done; the core's next commands."""
    out = []
    for c in cmds:
        out += core.handle(Done(t, c.device, c.cmd_id, {}))
    return out


def test_handle_opens_a_safe_dark_site_and_starts_the_survey(core, sky):
    config, *_rest, t = sky
    opened = _open_xl(core, t)
    xl = [g for g in config.groups if g.site == "xl"]
    assert {c.name for c in opened} == {"open"}
    assert len(opened) == 3 * len(xl)
    assert all(c.device.startswith("xl.") for c in opened)
    nxt = _finish(core, opened, t + 5)
    nxt += core.handle(Tick(t + 60))
    slews = [c for c in nxt if c.name == "slew"]
    assert len(slews) == 3 * len(xl)  # every group slews its three telescopes
    # every target is above the altitude limit now, as the guard would check
    assert all(core.guard(c, t + 60) is None for c in slews)


def test_guard_names_the_rule_that_forbids_a_command(core, sky):
    _config, _g, _c, night, t = sky
    slew = Command("xl.g01.g", "slew", {"ra_deg": 0.0, "dec_deg": -80.0})  # never up at 40 N
    assert core.guard(Command("xl.g01.g", "open"), t) == "weather_missing"
    _open_xl(core, t)
    assert core.guard(Command("xl.g01.g", "open"), t) is None
    assert core.guard(slew, t) == "altitude"
    assert core.guard(Command("zz.g01.g", "open"), t) == "unknown_site"
    noon = night.t_begin - 6 * 3600.0
    core.handle(Weather(noon, "xl", **CALM))
    assert core.guard(Command("xl.g01.g", "open"), noon) == "sun"
    # closing and parking are always allowed: safety never blocks making things safe
    assert core.guard(Command("xl.g01.g", "close"), t) is None
    assert core.guard(Command("xl.g01.g", "park"), noon) is None


def test_refuse_counts_the_veto_and_frees_the_group(core, sky):
    *_rest, t = sky
    opened = _open_xl(core, t)
    _finish(core, opened, t + 5)
    cmds = core.handle(Tick(t + 60))
    slew = next(c for c in cmds if c.name == "slew")
    after = core.refuse(slew, t + 60, "wind")
    assert core.vetoes == {"wind": 1}
    assert slew.cmd_id not in {c.cmd_id for c in after}


def test_review_safety_closes_a_site_whose_weather_went_stale(core, sky):
    config, *_rest, t = sky
    _finish(core, _open_xl(core, t), t + 5)
    assert core.review_safety(t + 60) == []  # fresh and calm: nothing to do
    late = t + config.limits.max_weather_age_s + 1.0
    cmds = core.review_safety(late)
    assert {c.name for c in cmds} == {"close", "park"}
    assert {c.device.split(".")[0] for c in cmds} == {"xl"}
    assert core.sites["xl"].verdict.rule == "weather_stale"


def test_dawn_close_closes_and_parks_what_is_open(core, sky):
    *_rest, t = sky
    _finish(core, _open_xl(core, t), t + 5)
    cmds = core.dawn_close("xl", t + 120)
    assert cmds and {c.name for c in cmds} == {"close", "park"}
    assert core.dawn_close("xl", t + 180) == []  # already closed


def test_plan_state_is_plain_data_the_planner_can_carry(core, sky):
    *_rest, t = sky
    _open_xl(core, t)
    state = core.plan_state(t)
    assert isinstance(state, PlanState)
    again = PlanState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert state.sites["xl"]["open"] and state.sites["xl"]["dark"]
    assert not state.sites["lh"]["open"]
    assert state.groups["xl.g01"]["site"] == "xl"


def test_restore_continues_exposure_ids_and_keeps_detections(sky):
    config, grid, cache, _night, t = sky
    core = BrainCore(config, grid=grid, nights=cache)
    det = DetectionBatch(np.array([10.0, 10.0]), np.array([20.0, 20.0]),
                         np.array([61389.1, 61389.2]), np.array([0, 1]),
                         np.array([19.0, 19.1]), np.array([0.05, 0.05]), np.array([-1, -1]))
    core.restore([(5, 0, t - 1800.0)], 41, det)
    assert core.associator.n_objects == 1  # both detections are one object
    _finish(core, _open_xl(core, t), t + 5)
    slews = [c for c in core.handle(Tick(t + 60)) if c.name == "slew"]
    exposes = [c for c in _finish(core, slews, t + 70) if c.name == "expose"]
    seqs = sorted(int(c.args["obs_id"][-7:]) for c in exposes)
    assert seqs[0] == 42  # new exposures continue after the restored ones


def test_classification_offload_applies_the_answer_on_the_loop(sky):
    config, grid, cache, _night, t = sky

    class Uniform:  # a stand-in model: the interface, not the classifier, is tested
        classes = ("SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "CV", "Flare", "uLens",
                   "RRL", "EB", "DSCT", "LPV", "AGN")

        def predict(self, obj, mjd, band, mag, err, n_objects, radec=None, ref=None):
            return np.full((n_objects, len(self.classes)), 1.0 / len(self.classes))

    core = BrainCore(config, grid=grid, nights=cache, classifier=Uniform())
    mjd = 61389.0 + np.arange(6) * 0.02
    det = DetectionBatch(np.full(6, 30.0), np.full(6, 10.0), mjd, np.arange(6) % 3,
                         np.full(6, 19.0), np.full(6, 0.05), np.full(6, -1))
    core.restore([], 0, det)
    job = core.classification_job(everything=True)
    assert core.obj_prob.sum() == 0  # taking the job changes no probability
    cand, prob = job()  # a shell may run this on another thread
    assert list(cand) == [0]
    core.finish_classification(t, cand, prob)
    assert np.allclose(core.obj_prob[0], 1.0 / 14)


def test_fast_shell_sends_every_command_through_the_guard(sky):
    """A veto in the fast shell: a command the guard refuses never reaches a telescope
    of the world; the core hears FAILED unsafe and counts the veto."""
    config, grid, cache, _night, t = sky
    core = BrainCore(config, grid=grid, nights=cache)
    world = World(config)
    world.begin_night(cache.get(DATE)[1], {})
    dispatch = Dispatcher(core, world)
    opened = _open_xl(core, t)
    dispatch(opened, t)
    assert len(dispatch.queue) == len(opened)  # safe commands went through
    before = len(dispatch.queue)
    low = Command("xl.g01.g", "slew", {"ra_deg": 0.0, "dec_deg": -80.0})
    dispatch([low], t + 10)
    assert core.vetoes == {"altitude": 1}
    assert len(dispatch.queue) == before  # the world never saw it
    tel = world.telescopes["xl.g01.g"]
    assert tel.ra_deg is None and tel.dec_deg is None  # still parked at the zenith


def test_plan_state_candidate_list_is_rebuilt_after_a_classification_or_a_minute(sky):
    """The planner's candidate list costs hundreds of ms at 20,000 candidates and the
    operators' desk asks for a state every 2 s: it is reused until a classification pass
    answers or a minute of world time has passed, never longer."""
    from observatory.times import unix_to_mjd

    config, grid, cache, _night, t = sky
    core = BrainCore(config, grid=grid, nights=cache)
    rng = np.random.default_rng(3)
    n_obj, n_det = 3, 5
    ra = np.repeat([10.0, 40.0, 70.0], n_det) + rng.normal(0, 1e-5, n_obj * n_det)
    dec = np.repeat([20.0, 25.0, 30.0], n_det)
    mjd = unix_to_mjd(t - 3600.0) + np.tile(np.arange(n_det) * 0.01, n_obj)
    mag = 19.0 + rng.normal(0, 0.3, n_obj * n_det)
    core.restore([], 0, DetectionBatch(ra, dec, mjd, np.zeros(n_obj * n_det, int), mag,
                                       np.full(n_obj * n_det, 0.05),
                                       np.full(n_obj * n_det, -1)))
    core.classify_candidates(everything=True)
    first = core.plan_state(t).objects
    assert len(first) == n_obj
    oid = sorted(first)[0]
    row = int(core.associator.rows_of([int(oid[1:])])[0])
    core.associator.prob[row] = 0.0
    core.associator.prob[row, 0] = 1.0  # a new answer, not yet counted as a pass
    assert core.plan_state(t + 10).objects == first  # reused
    core.n_classified += 1  # the pass is counted: the next state has it
    assert core.plan_state(t + 20).objects[oid]["p_predicted"] == 1.0
    core.associator.prob[row, 0], core.associator.prob[row, 1] = 0.0, 1.0
    assert core.plan_state(t + 30).objects[oid]["predicted_class"] == "SNIa"
    assert core.plan_state(t + 90).objects[oid]["predicted_class"] == "SNII"  # a minute on
