"""Determinism and replay, and the files a run writes (docs/contracts.md).

A run is fully determined by its seed: the same seed gives the same environment and the
same observation log. ``brain replay`` re-runs a recorded environment (the same weather)
with another policy; as no follow-up policy acts yet, the survey log is unchanged.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import CLIMATE_ARGS, read_environment, read_metrics, read_observations

from observatory.records import OBS_COLUMNS

# Two extra whole nights for the session: a second run of the climate night, and a
# replay of the clear night. Both start together and run side by side.


@pytest.fixture(scope="module")
def second_runs(run_pool, clear_run, climate_run):
    """(rerun of the climate night with the same seed, greedy replay of the clear run)."""
    run_pool.start("rerun", ["simulate", *CLIMATE_ARGS])
    run_pool.start("replay", ["replay", str(clear_run), "--policy", "greedy"])
    return run_pool.wait("rerun"), run_pool.wait("replay")


def _assert_same_arrays(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _without_timing(m: dict) -> dict:
    m = json.loads(json.dumps(m))
    m.pop("sim")
    m["scheduler"].pop("decision_ms")
    for night in m["nights"]:
        night.pop("wall_s")
    return m


# Determinism --------------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_same_environment(climate_run, second_runs):
    """Two runs with the same seed record identical weather arrays and metadata."""
    rerun, _replay = second_runs
    _assert_same_arrays(read_environment(climate_run), read_environment(rerun))
    assert (json.loads((climate_run / "environment.json").read_text())
            == json.loads((rerun / "environment.json").read_text()))


@pytest.mark.slow
def test_same_seed_same_observations(climate_run, second_runs):
    """Two runs with the same seed write byte-identical observation logs and windows,
    and the same metrics apart from wall-clock timings."""
    rerun, _replay = second_runs
    for name in ("observations.csv", "windows.csv"):
        assert (climate_run / name).read_bytes() == (rerun / name).read_bytes(), name
    assert _without_timing(read_metrics(climate_run)) == _without_timing(read_metrics(rerun))


def test_environment_depends_on_the_seed_only(config, tmp_path):
    """Drawing the environment twice with one seed gives identical weather; another
    seed gives different weather; saving and loading it loses nothing."""
    from observatory.sky import FieldGrid
    from observatory.visibility import NightCache
    from simulator.environment import Environment, make_environment

    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid)
    a = make_environment(config, 11, "2026-12-15", 1, "climate", cache)
    b = make_environment(config, 11, "2026-12-15", 1, "climate", cache)
    c = make_environment(config, 12, "2026-12-15", 1, "climate", cache)
    assert sorted(a.weather) == sorted(b.weather) == sorted(c.weather)
    for key in a.weather:
        _assert_same_arrays(a.weather[key].arrays(), b.weather[key].arrays())
    assert any(not np.array_equal(a.weather[k].wind_mps, c.weather[k].wind_mps)
               for k in a.weather)
    a.save(tmp_path)
    loaded = Environment.load(tmp_path)
    assert (loaded.seed, loaded.start, loaded.nights, loaded.weather_mode) == (
        11, "2026-12-15", 1, "climate")
    assert loaded.config == a.config
    for key in a.weather:
        _assert_same_arrays(a.weather[key].arrays(), loaded.weather[key].arrays())


# Replay ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_replay_reproduces_the_environment(clear_run, second_runs):
    """A replay records exactly the weather (and config, seed, dates) it replayed."""
    _rerun, replay = second_runs
    _assert_same_arrays(read_environment(clear_run), read_environment(replay))
    assert (json.loads((clear_run / "environment.json").read_text())
            == json.loads((replay / "environment.json").read_text()))


@pytest.mark.slow
def test_replay_reproduces_the_survey(clear_run, second_runs):
    """With no follow-up policy acting yet, a greedy replay of the clear night observes
    exactly what the original run observed; its metrics name the new policy."""
    _rerun, replay = second_runs
    assert (clear_run / "observations.csv").read_bytes() == (
        replay / "observations.csv").read_bytes()
    original, replayed = read_metrics(clear_run), read_metrics(replay)
    assert replayed["policy"] == "greedy"
    assert (replayed["seed"], replayed["n_nights"], replayed["config"]) == (
        original["seed"], original["n_nights"], original["config"])
    assert replayed["survey"] == original["survey"]


# The files a run writes -----------------------------------------------------------------
METRICS_KEYS = {
    "seed": None, "nights": None, "policy": None, "config": None,
    "survey": {"coverage_deg2_per_30min": {"median": None, "p10": None, "p90": None,
                                           "windows": None},
               "coverage_bound_deg2_per_30min": {"median": None},
               "open_shutter_fraction": None, "median_slew_s": None, "visits": None,
               "median_revisit_min": None},
    "scheduler": {"decision_ms": {"p50": None, "p99": None}},
    "transients": {"injected": None, "detected": None, "candidates": None},
    "classifier": {"macro_f1": None, "macro_f1_first_night": None},
    "followup": {"spectra": None, "hours": None, "reward": None, "reward_per_hour": None,
                 "confirmed": {}},
    "sim": {"sim_seconds": None, "wall_seconds": None, "speedup": None},
}


def _missing_keys(spec: dict, got: dict, where: str = "") -> list[str]:
    missing = []
    for k, sub in spec.items():
        if k not in got:
            missing.append(where + k)
        elif isinstance(sub, dict):
            if not isinstance(got[k], dict):
                missing.append(f"{where}{k} (not an object)")
            else:
                missing += _missing_keys(sub, got[k], f"{where}{k}.")
    return missing


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clear", "climate", "replay"])
def test_metrics_have_every_contract_key(request, which):
    """metrics.json holds every key docs/contracts.md lists, as JSON (no NaN), with the
    run's seed, night count, policy and config name."""
    if which == "replay":
        run_dir, policy = request.getfixturevalue("second_runs")[1], "greedy"
    else:
        run_dir, policy = request.getfixturevalue(f"{which}_run"), "rl"
    text = (run_dir / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    m = json.loads(text)
    assert _missing_keys(METRICS_KEYS, m) == []
    assert (m["n_nights"], m["policy"], m["config"]) == (1, policy, "sitian-54")
    # The per-night list: one entry per night with the contract's keys.
    assert [n["date"] for n in m["nights"]] == [m["start"][:10]] or len(m["nights"]) == 1
    assert set(m["nights"][0]) >= {"date", "wall_s", "exposures", "coverage_deg2_per_30min",
                                   "candidates_new", "classified", "spectra", "reward",
                                   "macro_f1"}
    assert m["nights"][0]["exposures"] == m["survey"]["exposures"]
    assert m["nights"][0]["spectra"] == m["followup"]["spectra"]
    assert m["seed"] == (6 if which == "climate" else 7)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clear", "climate"])
def test_run_files_follow_the_contract(request, which):
    """A run writes observations.csv, followups.csv and objects.csv with the contract's
    columns, the environment record, windows.csv, and report.html with its PNGs."""
    run_dir = request.getfixturevalue(f"{which}_run")
    headers = {
        "observations.csv": list(OBS_COLUMNS),
        "followups.csv": ["target_id", "object_id", "telescope", "t_start", "t_end", "mag",
                          "predicted_class", "p_predicted", "true_class", "label",
                          "before_peak", "reward"],
        "objects.csv": ["object_id", "ra_deg", "dec_deg", "n_detections", "predicted_class",
                        "p_predicted", "true_class", "first_mjd", "last_mjd", "n_nights"],
    }
    assert headers["observations.csv"] == [
        "obs_id", "telescope", "site", "group", "band", "field_id", "ra_deg", "dec_deg",
        "t_start", "t_end", "alt_deg", "airmass", "moon_sep_deg", "sun_alt_deg",
        "limiting_mag"]
    for name, columns in headers.items():
        with (run_dir / name).open(newline="") as fh:
            assert next(csv.reader(fh)) == columns, name
    for name in ("environment.json", "environment.npz", "windows.csv", "report.html"):
        assert (run_dir / name).is_file(), name
    html = (run_dir / "report.html").read_text()
    # Every figure of the report, each a PNG of a readable size (pixels, at 85-90 dpi).
    from brain.ops.report import FIGURES
    from tests.test_nightjobs import png_size

    assert sorted(p.name for p in run_dir.glob("*.png")) == sorted(FIGURES)
    min_size = {"sky_coverage.png": (700, 350), "coverage_windows.png": (700, 200),
                "open_shutter.png": (700, 400), "followups.png": (600, 180),
                "light_curves.png": (900, 500)}
    for name in FIGURES:
        w, h = png_size(run_dir / name)
        assert w >= min_size[name][0] and h >= min_size[name][1], (name, w, h)
        assert (run_dir / name).stat().st_size > 10_000, name  # drawn, not blank
        assert name in html, name
    assert "Against the goals" in html and "followups.png" in html


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clear", "climate"])
def test_metrics_agree_with_the_run_files(request, which):
    """metrics.json counts what the files hold: one window row per coverage window, and
    visits are the three-band group exposures in observations.csv."""
    run_dir = request.getfixturevalue(f"{which}_run")
    m = read_metrics(run_dir)["survey"]
    with (run_dir / "windows.csv").open(newline="") as fh:
        windows = list(csv.DictReader(fh))
    assert m["coverage_deg2_per_30min"]["windows"] == len(windows)
    covered = [float(w["covered_deg2"]) for w in windows]
    assert m["coverage_deg2_per_30min"]["median"] == pytest.approx(np.median(covered),
                                                                   abs=0.1)
    obs = read_observations(run_dir)
    keys = {(s, int(g), float(t)) for s, g, t in zip(obs["site"], obs["group"],
                                                     obs["t_start"], strict=True)}
    assert m["visits"] == len(keys) == obs.size // 3
    assert 0 < m["open_shutter_fraction"] <= 1
