"""Spectroscopic follow-up: the spectrographs, the manager, the policies, the run files,
replays of the follow-up over a recorded stream, and the gymnasium environment."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from observatory.spectra import DEFAULT_REWARD, exposure_s, science_reward
from observatory.visibility import target_alt_deg
from simulator.spectroscopy import Spectrographs
from tests.conftest import read_metrics, run_brain


# The exposure formula and the reward (docs/contracts.md) ------------------------------
def test_exposure_formula_and_clamp(config):
    spec = config.spectrographs[0]
    assert exposure_s(spec, 19.0) == pytest.approx(900.0)
    assert exposure_s(spec, 20.0) == pytest.approx(900.0 * 10 ** 0.4)
    assert exposure_s(spec, 16.0) == pytest.approx(300.0)  # clamped below
    assert exposure_s(spec, 23.0) == pytest.approx(3600.0)  # clamped above
    assert spec.acquisition_s == 300.0 and spec.label_limit_mag == 21.5


def test_science_reward_table():
    assert science_reward("KN", "KN", False) == 50.0
    assert science_reward("KN", "KN", True) == 100.0  # before the peak: twice
    assert science_reward("TDE", "TDE", True) == 40.0
    assert science_reward("SNIa", None, True) == 0.0  # no label, no reward
    assert science_reward("KN", "SNIa", False) == 0.0  # a wrong label earns nothing
    assert science_reward(None, None, False) == 0.0  # an artefact
    assert science_reward("RRL", "RRL", False) == 0.0
    assert set(DEFAULT_REWARD) == {"SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "CV",
                                   "Flare", "uLens", "RRL", "EB", "DSCT", "LPV", "AGN"}


def test_the_report_says_what_confirmed_as_predicted_counts():
    """Five spectra, four predicted KN: one label confirms its prediction (KN), one
    confirms an SNIa prediction although the truth was SNII, two are SNIa where KN was
    predicted, one has no label. Confirmed as predicted: 2 of 4; labels matching the
    simulator's truth: 3 of 4, said apart, and only where the truth is known."""
    from types import SimpleNamespace

    from brain.core.followup import followup_summary
    from brain.ops.report import followup_sentence

    def row(predicted, label, truth):
        return {"predicted_class": predicted, "label": label, "true_class": truth,
                "reward": 0.0, "before_peak": False, "_hours": 0.5}

    rows = [row("KN", "SNIa", "SNIa"), row("KN", "SNIa", "SNIa"), row("KN", "KN", "KN"),
            row("SNIa", "SNIa", "SNII"), row("KN", "", "bogus")]
    m = followup_summary(SimpleNamespace(records={}, n_decisions=5), rows, ticks=[])
    assert (m["spectra"], m["labelled"]) == (5, 4)
    assert m["confirmed"] == {"KN": 1, "SNIa": 1}
    assert m["labels_matching_truth"] == 3
    text = followup_sentence(m)
    assert ("confirmed as predicted (label = the class the brain predicted): 2 of 4 "
            "(KN 1, SNIa 1)") in text
    assert "Labels matching the simulator's truth: 3 of 4" in text
    # The daemon has no truth: no such line.
    daemon = {k: v for k, v in m.items() if k != "labels_matching_truth"}
    assert "truth" not in followup_sentence(daemon)
    none = followup_sentence({"spectra": 0, "hours": 0.0, "confirmed": {}})
    assert "confirmed as predicted (label = the class the brain predicted): 0 of 0." in none


# The spectrographs against a real simulated sky -----------------------------------------
@pytest.fixture(scope="module")
def sky_and_population(config):
    from observatory.sky import FieldGrid
    from observatory.visibility import NightCache
    from simulator.environment import make_environment

    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid)
    env = make_environment(config, 3, "2026-12-15", 1, "clear", cache)
    night, sky = cache.get("2026-12-15")
    return night, sky, env.population


def _dark_mid(night, site):
    t0, t1 = night.sites[site].dark_intervals(-18.0)[0]
    return 0.5 * (t0 + t1)


def _pick(pop, eph, t, cond):
    """A source that is high in the sky at t and satisfies cond(mag_r)."""
    idx = np.arange(pop.size)
    alt = target_alt_deg(eph, pop.ra_deg, pop.dec_deg, t)
    alt_late = target_alt_deg(eph, pop.ra_deg, pop.dec_deg, t + 5000)
    mag = pop.magnitudes(idx, t, 1)
    ok = np.flatnonzero((alt > 50) & (alt_late > 40) & cond(mag))
    assert ok.size, "no such source in the test sky"
    return int(ok[0]), float(mag[ok[0]])


def _spectro(config, sky, pop):
    s = Spectrographs(config, pop, seed=5)
    s.begin_night(sky)
    return s


def test_bright_source_gets_its_true_label(config, sky_and_population):
    night, sky, pop = sky_and_population
    t = _dark_mid(night, "lh")
    src, mag = _pick(pop, night.sites["lh"], t, lambda m: m < 19.5)
    s = _spectro(config, sky, pop)
    assert s.execute("lh.spec", "open", {}, "c0", t).ok
    args = {"ra_deg": float(pop.ra_deg[src]), "dec_deg": float(pop.dec_deg[src]),
            "seconds": float(exposure_s(config.spectrographs[1], mag)), "target_id": "T1"}
    r = s.execute("lh.spec", "spectrum", args, "c1", t)
    assert r.ok and r.t > t + 300  # acquisition at least
    entry = s.complete(r)
    true = ["SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "CV", "Flare", "uLens", "RRL",
            "EB", "DSCT", "LPV", "AGN"][int(pop.cls[src])]
    assert entry["true_class"] == true and entry["source"] == src
    assert r.result["label"] is not None and "_truth" not in r.result  # truth stays out
    assert r.result["t_end"] - r.result["t_start"] == pytest.approx(args["seconds"])


def test_faint_source_and_empty_sky_give_no_label(config, sky_and_population):
    night, sky, pop = sky_and_population
    t = _dark_mid(night, "lh")
    src, _mag = _pick(pop, night.sites["lh"], t, lambda m: (m > 21.8) & np.isfinite(m))
    s = _spectro(config, sky, pop)
    s.execute("lh.spec", "open", {}, "c0", t)
    r = s.execute("lh.spec", "spectrum", {"ra_deg": float(pop.ra_deg[src]),
                                          "dec_deg": float(pop.dec_deg[src]),
                                          "seconds": 3600.0}, "c1", t)
    assert r.ok and r.result["label"] is None
    # An empty spot (an artefact's position): no source, no label, no truth class.
    eph = night.sites["lh"]
    r2 = s.execute("lh.spec", "spectrum", {"ra_deg": float(eph.lst_deg(r.t)) % 360,
                                           "dec_deg": 38.6, "seconds": 300.0}, "c2", r.t)
    assert r2.ok and r2.result["label"] is None
    entry = s.complete(r2)
    assert entry["source"] == -1 and entry["true_class"] is None


def test_impossible_spectra_are_refused_without_state_change(config, sky_and_population):
    night, sky, pop = sky_and_population
    t = _dark_mid(night, "xl")
    s = _spectro(config, sky, pop)
    eph = night.sites["xl"]
    overhead = {"ra_deg": float(eph.lst_deg(t)) % 360, "dec_deg": 40.0, "seconds": 600.0}
    r = s.execute("xl.spec", "spectrum", overhead, "c1", t)
    assert not r.ok and r.code == "device_fault"  # still closed
    s.execute("xl.spec", "open", {}, "c2", t)
    below = {"ra_deg": (float(eph.lst_deg(t)) + 180) % 360, "dec_deg": -30.0, "seconds": 600.0}
    r = s.execute("xl.spec", "spectrum", below, "c3", t)
    assert not r.ok and r.code == "limit"
    assert s.units["xl.spec"].busy_until == -math.inf and s.units["xl.spec"].ra_deg is None
    for bad in ({"ra_deg": 10.0}, {"ra_deg": 400.0, "dec_deg": 0.0, "seconds": 10.0},
                {"ra_deg": "x", "dec_deg": 0.0, "seconds": 10.0}):
        r = s.execute("xl.spec", "spectrum", bad, "c4", t)
        assert not r.ok and r.code == "bad_args"
    assert not s.execute("zz.spec", "spectrum", overhead, "c5", t).ok
    ok = s.execute("xl.spec", "spectrum", overhead, "c6", t)
    assert ok.ok
    busy = s.execute("xl.spec", "spectrum", overhead, "c7", t + 10)
    assert not busy.ok and busy.code == "busy"
    # Closing mid-exposure loses the spectrum: its reply is stale, nothing is logged.
    s.execute("xl.spec", "close", {}, "c8", t + 60)
    assert not s.is_current(ok) and s.aborted == 1 and s.log == []


# A whole night with follow-up (the session's simulated nights run the rl policy) ---------
def _rows(run_dir):
    with (run_dir / "followups.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clear_run", "climate_run"])
def test_followups_file_matches_metrics_and_reward(request, which):
    run_dir = request.getfixturevalue(which)
    rows = _rows(run_dir)
    m = read_metrics(run_dir)["followup"]
    assert m["spectra"] == len(rows) > 0
    assert m["reward"] == pytest.approx(sum(float(r["reward"]) for r in rows))
    assert m["reward_per_hour"] == pytest.approx(m["reward"] / m["hours"])
    for r in rows:
        before = r["before_peak"] == "1"
        assert float(r["reward"]) == science_reward(
            None if r["true_class"] == "bogus" else r["true_class"], r["label"] or None, before)
        assert float(r["t_end"]) > float(r["t_start"])
    # No object gets two spectra; labels are counted per class when they confirm the
    # prediction, and apart when they match the simulator's truth.
    assert len({r["object_id"] for r in rows}) == len(rows)
    as_predicted = [r for r in rows if r["label"] and r["label"] == r["predicted_class"]]
    assert sum(m["confirmed"].values()) == len(as_predicted)
    right = [r for r in rows if r["label"] and r["label"] == r["true_class"]]
    assert m["labels_matching_truth"] == len(right)


@pytest.mark.slow
def test_spectra_are_taken_in_the_dark_above_the_limit(clear_run, config):
    from observatory.ephemeris import NightEphemeris

    night = NightEphemeris.compute(config, "2026-12-15")
    for r in _rows(clear_run):
        site = r["telescope"].split(".")[0]
        eph = night.sites[site]
        t0, t1 = float(r["t_start"]), float(r["t_end"])
        assert eph.sun_alt(t1) <= -18.0 + 1e-6
        # The object's position comes from objects.csv.
        obj = _object_positions(clear_run)[r["object_id"]]
        for t in (t0, t1):
            assert target_alt_deg(eph, obj[0], obj[1], t) >= 30.0


_POSITIONS: dict = {}


def _object_positions(run_dir):
    if run_dir not in _POSITIONS:
        with (run_dir / "objects.csv").open(newline="") as fh:
            _POSITIONS[run_dir] = {r["object_id"]: (float(r["ra_deg"]), float(r["dec_deg"]))
                                   for r in csv.DictReader(fh)}
    return _POSITIONS[run_dir]


@pytest.mark.slow
def test_no_spectrum_runs_while_its_site_is_closed(climate_run):
    from brain.evaluation.followup_replay import Stream

    stream = Stream.load(climate_run / "stream.npz")
    sites = ["xl", "lh", "mz"]
    t = np.array([x[0] for x in stream.ticks])
    is_open = np.array([x[2] for x in stream.ticks])
    assert (~is_open).any() and is_open.any()  # the night has closures to respect
    for r in _rows(climate_run):
        k = sites.index(r["telescope"].split(".")[0])
        inside = (t >= float(r["t_start"])) & (t < float(r["t_end"]) - 60)
        assert is_open[inside, k].all(), r["target_id"]


@pytest.fixture(scope="module")
def clear_stream(clear_run, config):
    from brain.evaluation.followup_replay import Stream
    from observatory.sky import FieldGrid
    from observatory.visibility import NightCache
    from simulator.environment import Environment

    env = Environment.load(clear_run)
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    return env, Stream.load(clear_run / "stream.npz"), NightCache(config, grid)


@pytest.mark.slow
def test_replaying_the_stream_reproduces_the_run(clear_run, clear_stream, config):
    """The follow-up re-run alone over the recorded stream takes exactly the spectra the
    full fast shell took (same targets, same times): evaluations can rely on it."""
    from brain.evaluation.policy_training import replay_followup
    from policies.followup import make_policy

    env, stream, cache = clear_stream
    m, rows = replay_followup(config, env, stream, cache, make_policy("rl", env.seed))
    ref = _rows(clear_run)
    assert [(r["target_id"], r["object_id"]) for r in rows] == [
        (r["target_id"], r["object_id"]) for r in ref]
    assert [f"{r['t_end']:.1f}" for r in rows] == [r["t_end"] for r in ref]
    assert m["reward"] == pytest.approx(read_metrics(clear_run)["followup"]["reward"])


@pytest.mark.slow
def test_greedy_beats_random_and_policies_differ(clear_stream, config):
    from brain.evaluation.policy_training import replay_followup
    from policies.followup import make_policy

    env, stream, cache = clear_stream
    got = {name: replay_followup(config, env, stream, cache, make_policy(name, env.seed))
           for name in ("greedy", "random", "brightest")}
    assert got["greedy"][0]["reward"] > got["random"][0]["reward"]
    # brightest takes the most (cheap, short) spectra, on bright variables.
    assert got["brightest"][0]["spectra"] > got["random"][0]["spectra"]
    ids = {k: [r["object_id"] for r in v[1]] for k, v in got.items()}
    assert ids["greedy"] != ids["random"] != ids["brightest"]


@pytest.mark.slow
def test_gymnasium_environment_passes_the_checker(clear_run):
    from gymnasium.utils.env_checker import check_env

    from brain.evaluation.policy_training import StreamLoops
    from policies.env import FollowupEnv
    from policies.rl import OBS_SIZE

    env = FollowupEnv({"make_loop": StreamLoops([str(clear_run)])})
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (OBS_SIZE,)
    total, steps, done = 0.0, 0, False
    while not done:
        obs, r, done, _trunc, _ = env.step(0)
        total += r
        steps += 1
    assert steps > 10 and total > 0  # a night of decisions that earned something


def test_rl_artifact_round_trip_and_layout_check(tmp_path):
    from policies.rl import OBS_SIZE, RLPolicy

    rng = np.random.default_rng(1)
    layers = [(rng.normal(size=(OBS_SIZE, 8)), rng.normal(size=8)),
              (rng.normal(size=(8, 17)), rng.normal(size=17))]
    p = RLPolicy(layers)
    p.save(tmp_path, {"note": "test"})
    q = RLPolicy.load(tmp_path)
    x = rng.normal(size=OBS_SIZE).astype(np.float32)
    assert np.allclose(p.logits(x), q.logits(x), atol=1e-4)
    meta = (tmp_path / "meta.json").read_text().replace(f'"obs_size": {OBS_SIZE}',
                                                        '"obs_size": 3')
    (tmp_path / "meta.json").write_text(meta)
    with pytest.raises(ValueError, match="another observation layout"):
        RLPolicy.load(tmp_path)


def test_shipped_rl_policy_loads_and_is_small():
    from policies.rl import ARTIFACT_DIR, RLPolicy

    p = RLPolicy.load()
    size = sum(f.stat().st_size for f in ARTIFACT_DIR.iterdir())
    assert size < 1_000_000
    assert p.meta["train_seeds"] and not set(p.meta["train_seeds"]) & set(range(9001, 9101))


# The command line -----------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--seeds", "1001..1003"], "training seeds"),
    (["--seeds", "9..x"], "not a seed range"),
    (["--policies", "greedy,magic"], "unknown policy 'magic'"),
    (["--nights", "0"], "between 1 and 30"),
])
def test_evaluate_bad_input_is_one_line(args, needle, tmp_path):
    r = run_brain("evaluate", *args, "--out", str(tmp_path / "e"))
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_evaluate_writes_the_contract_table(tmp_path):
    out = tmp_path / "ev"
    r = run_brain("evaluate", "--policies", "greedy,random", "--seeds", "9001..9002",
                  "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    with (out / "evaluation.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["policy", "seed", "spectra", "hours", "reward",
                             "reward_per_hour", "coverage_deg2_per_30min", "macro_f1",
                             "node", "node_id"]  # the contract's, then where each ran
    assert [(x["policy"], x["seed"]) for x in rows] == [
        ("greedy", "9001"), ("greedy", "9002"), ("random", "9001"), ("random", "9002")]
    # Both policies faced the same sky: the survey columns agree seed by seed.
    by = {(x["policy"], x["seed"]): x for x in rows}
    for s in ("9001", "9002"):
        assert by[("greedy", s)]["coverage_deg2_per_30min"] == by[
            ("random", s)]["coverage_deg2_per_30min"]
    assert "greedy" in r.stdout and "random" in r.stdout


@pytest.mark.slow
def test_labels_feed_the_next_classifier(clear_run, tmp_path):
    """The data flywheel: a run's spectroscopic labels are stored with their light curves
    and `brain train classifier --from-runs` learns from them."""
    from policies.lightcurve_io import read_labelled

    rows = _rows(clear_run)
    labelled = read_labelled([clear_run / "labelled.csv"])
    assert labelled.n == sum(1 for r in rows if r["label"])
    r = run_brain("train", "classifier", "--n-per-class", "100", "--from-runs", str(clear_run),
                  "--out", str(tmp_path / "clf"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'"labelled_light_curves": {labelled.n}' in r.stdout
    bad = run_brain("train", "classifier", "--from-runs", str(tmp_path))
    assert bad.returncode == 2 and "no labelled.csv" in bad.stderr


def test_reward_config_is_checked_and_merged_onto_the_contract(config):
    from brain.config import ConfigError, config_from_dict

    data = config.model_dump(mode="json")
    data["followup"] = {"reward": {"KN": 80}}
    merged = config_from_dict(data).followup.reward
    assert merged["KN"] == 80 and merged["TDE"] == 20 and len(merged) == 14
    for bad, needle in (({"Unicorn": 3}, "unknown class 'Unicorn'"),
                        ({"KN": -1}, "reward of KN")):
        data["followup"] = {"reward": bad}
        with pytest.raises(ConfigError, match=needle):
            config_from_dict(data)


@pytest.mark.parametrize("args, needle", [
    (["train", "policy", "--from-runs", "x"], "--from-runs does not apply"),
    (["train", "policy", "--n-per-class", "200"], "--n-per-class does not apply"),
    (["train", "classifier", "--iterations", "3"], "--iterations does not apply"),
])
def test_train_options_of_the_other_model_are_refused(args, needle):
    r = run_brain(*args)
    assert r.returncode == 2 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
