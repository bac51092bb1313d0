"""Follow-up over nights: what the candidate table says about an object's season (age,
nights since its first detection, whether its peak has passed -- from the brain's own
photometry --, the night's and the season's budget left), the season budget, episodes of
several nights in the RL environment, and a multi-night evaluation."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import yaml

from brain.config import config_from_dict
from brain.core.association import Associator, DetectionBatch
from brain.core.events import Done
from brain.core.followup import FollowupManager
from brain.core.stream import Snapshot, take_snapshot
from observatory.ephemeris import NightEphemeris, night_date
from observatory.times import mjd_to_unix, unix_to_mjd
from policies.candidates import peak_passed
from policies.followup import make_policy
from policies.rl import N_FEATURES, encode
from tests.conftest import REPO, run_brain

# 2026-12-15 17:00 UTC: one in the morning at Xinglong, the middle of a long night.
T = 1797354000.0
MJD0 = 61020.0
KN = 5  # observatory.taxonomy.CLASSES


# The peak from photometry ----------------------------------------------------------------
def _batch(ra: float, mags, night: int, err: float = 0.03) -> DetectionBatch:
    n = len(mags)
    mjd = MJD0 + night + 0.1 + 0.02 * np.arange(n)
    return DetectionBatch(np.full(n, ra), np.full(n, 20.0), mjd, np.ones(n, dtype=np.int64),
                          np.asarray(mags, dtype=float), np.full(n, err))


def test_peak_passed_comes_from_the_brains_photometry():
    """Three r light curves over three nights: one rises then fades, one is still
    rising, one wanders within its errors. Only the first has passed its peak; the
    peak of the first lies in a night already closed (the catalogue's history)."""
    curves = {10.0: ([19.0, 18.6], [18.2, 18.0], [18.5, 18.7]),     # rises, then fades
              20.0: ([20.0, 19.8], [19.5, 19.3], [19.0, 18.8]),     # still rising
              30.0: ([18.50, 18.45], [18.47, 18.52], [18.49, 18.55])}  # flat
    a = Associator(2.0, memory_nights=1)
    for night in range(3):
        for ra, nights in curves.items():
            a.add(_batch(ra, nights[night], night))
        if night < 2:
            a.close_night(MJD0 + night + 0.9)
    rows = np.arange(a.n_objects)
    assert rows.size == 3
    snap = take_snapshot(float(mjd_to_unix(MJD0 + 2.5)), a, rows, 5.0, 25.0)
    by_ra = {round(float(r)): k for k, r in enumerate(snap.ra_deg)}
    k_fade, k_rise, k_flat = by_ra[10], by_ra[20], by_ra[30]
    assert snap.mag[k_fade] == pytest.approx(18.7)
    assert snap.peak_mag[k_fade] == pytest.approx(18.0)  # two nights ago
    assert snap.peak_mag[k_rise] == pytest.approx(18.8)  # the latest is the brightest
    assert snap.peak_mag[k_flat] == pytest.approx(18.45)
    passed = peak_passed(snap.mag - snap.peak_mag, snap.fade_err)
    assert passed[k_fade] and not passed[k_rise] and not passed[k_flat]


# The table ---------------------------------------------------------------------------------
def _config(config, **followup):
    data = config.model_dump(mode="json")
    data["followup"] = dict(data["followup"], **followup)
    return config_from_dict(data)


def _snapshot(t: float, eph, first_nights_ago, mag, peak, fade_err) -> Snapshot:
    """Bright KN candidates near the zenith of ``eph``'s site at ``t``."""
    n = len(mag)
    ra = (float(eph.lst_deg(t)) + np.linspace(-3, 3, n)) % 360
    prob = np.zeros((n, 14))
    prob[:, KN] = 1.0
    now = float(unix_to_mjd(t))
    return Snapshot(t, np.arange(n, dtype=np.int64), ra, np.full(n, eph.site.lat_deg),
                    np.asarray(mag, dtype=np.float32), np.zeros(n, dtype=np.float32),
                    now - np.asarray(first_nights_ago, dtype=float) - 0.1,
                    np.full(n, 12, dtype=np.int32), np.ones(n, dtype=np.int16), prob,
                    np.asarray(peak, dtype=np.float32), np.asarray(fade_err, dtype=np.float32))


def test_the_table_carries_age_nights_peak_and_budgets(config):
    cfg = _config(config, max_hours_per_night=2.0, max_hours_per_season=10.0)
    night = NightEphemeris.compute(cfg, night_date(cfg, T))
    eph = night.sites["xl"]
    mgr = FollowupManager(cfg, make_policy("greedy"))
    mgr.update(_snapshot(T, eph, [0, 2, 5], [18.0, 18.0, 18.0], [18.0, 17.2, 17.95],
                         [0.03, 0.03, 0.03]))
    table, _rows = mgr.candidates_for("xl.spec", T, night)
    k = np.argsort(table.object_id)
    assert table.n == 3
    assert table.nights_since_first[k].tolist() == [0, 2, 5]
    assert np.all(np.diff(table.age_days[k]) > 1.5)
    assert table.fade_mag[k] == pytest.approx([0.0, 0.8, 0.05], abs=1e-5)
    assert table.peak_passed[k].tolist() == [False, True, False]
    assert table.budget_left_s == pytest.approx(2 * 3600)
    assert table.season_left_s == pytest.approx(10 * 3600)
    # The RL policy sees them: flipping the peak flag or the season changes its input.
    x = encode(table)
    table.peak_passed[:] = ~table.peak_passed
    assert not np.array_equal(x[:N_FEATURES * 3], encode(table)[:N_FEATURES * 3])
    table.season_left_s = 3600.0
    assert encode(table)[-1] != x[-1]
    # No season budget: unlimited.
    plain = FollowupManager(config, make_policy("greedy"))
    plain.update(mgr.snapshot)
    assert math.isinf(plain.candidates_for("xl.spec", T, night)[0].season_left_s)


def _spectra(cmds):
    return [c for c in cmds if c.name == "spectrum"]


def _one_night(mgr, t, night, open_sites):
    """Tick until the first spectrum, deliver its reply, then tick once more: the
    spectra of the second tick."""
    cmds = _spectra(mgr.tick(t, open_sites, night))
    assert len(cmds) == 1
    st = mgr.specs["xl.spec"]
    t_end = st.busy["t_end"]
    mgr.on_reply(Done(t_end, "xl.spec", cmds[0].cmd_id,
                      {"t_start": t_end - cmds[0].args["seconds"], "t_end": t_end,
                       "label": "KN", "before_peak": False}))
    return _spectra(mgr.tick(t_end + 60, open_sites, night))


@pytest.mark.parametrize("season_h, more", [(None, True), (0.25, False)])
def test_the_season_budget_stops_followup_when_spent(config, season_h, more):
    """Many bright targets. Without a season budget the telescope goes on to a second
    spectrum; with 15 minutes for the season, one spectrum spends it and nothing more
    is taken, tonight or on the next night (whose nightly budget is fresh)."""
    cfg = _config(config, max_hours_per_season=season_h)
    open_sites = {"xl": True, "lh": False, "mz": False}
    night = NightEphemeris.compute(cfg, night_date(cfg, T))
    eph = night.sites["xl"]
    n = 8
    mgr = FollowupManager(cfg, make_policy("greedy"))
    mgr.update(_snapshot(T, eph, [0] * n, [17.0] * n, [17.0] * n, [0.03] * n))
    assert bool(_one_night(mgr, T, night, open_sites)) == more
    st = mgr.specs["xl.spec"]
    if more:
        return
    assert 0 < st.season_used_s <= 900 and mgr.specs["xl.spec"].busy is None
    # The next night, same sidereal time: fresh objects, a fresh night, no season left.
    t2 = T + 86164.0905
    night2 = NightEphemeris.compute(cfg, night_date(cfg, t2))
    assert night2.date != night.date
    mgr.update(_snapshot(t2, night2.sites["xl"], [0] * n, [17.0] * n, [17.0] * n, [0.03] * n))
    mgr.taken.clear()
    assert _spectra(mgr.tick(t2, open_sites, night2)) == []
    assert st.used_s == 0.0  # the night's budget is fresh; the season's is not
    table, _ = mgr.candidates_for("xl.spec", t2, night2)
    assert table.n == 0 and table.season_left_s == pytest.approx(900 - st.season_used_s)


# Episodes and evaluations over nights (a small array: one site, two groups) -------------
@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "small-xl"
    d["sites"] = [dict(d["sites"][0], groups=2)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("sky", {})["density_scale"] = 0.05
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def two_night_stream(small_config, tmp_path_factory):
    from brain.config import load_config
    from brain.evaluation.policy_training import record

    out = tmp_path_factory.mktemp("stream2")
    record(load_config(small_config), 9101, "2026-12-15", 2, out, survey_metrics=False)
    return out


@pytest.mark.slow
def test_multi_night_episodes_pass_the_env_checker(two_night_stream):
    from gymnasium.utils.env_checker import check_env

    from brain.evaluation.policy_training import StreamLoops
    from policies.env import FollowupEnv
    from policies.rl import OBS_SIZE

    env = FollowupEnv({"make_loop": StreamLoops([str(two_night_stream)])})
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (OBS_SIZE,) and env.observation_space.contains(obs)
    dates, done, steps = set(), False, 0
    while not done:
        dates.add(env._loop.manager._date)
        obs, _r, done, _trunc, _ = env.step(steps % 3)
        assert env.observation_space.contains(obs)
        steps += 1
    assert len(dates) == 2  # one episode, both nights


@pytest.mark.slow
def test_evaluate_over_nights_runs(small_config, tmp_path):
    out = tmp_path / "ev"
    r = run_brain("evaluate", "--config", str(small_config), "--nights", "2", "--seeds",
                  "9001", "--policies", "greedy,random", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 seeds x 2 night(s)" in r.stdout
    with (out / "evaluation.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["policy"], x["seed"]) for x in rows] == [("greedy", "9001"),
                                                         ("random", "9001")]
