"""Simulated-night speed and peak memory: the issue's reference night.

One JSON line. Clear night starting 2026-12-15, seed 7, default array. Three runs of the
same night and weather: the survey alone (the scheduler's figures), the survey with the
transient sky (photometry, association and classification during the night), and the
in-run baseline, a naive nearest-unvisited-field greedy scheduler on the survey alone.
"""

from __future__ import annotations

import json
import resource
import time

import numpy as np

from brain.config import load_config, with_climate
from brain.core.survey import FeasibilityMask, SurveyScheduler
from brain.ops.survey_metrics import run_metrics
from brain.shells.fast import simulate
from observatory.sky import AreaLattice, FieldGrid
from observatory.visibility import NightCache
from simulator.environment import make_environment


class NaiveGreedy(SurveyScheduler):
    """The nearest feasible field that nobody visited in the last cadence and no group
    is heading for; no reservations, no other features."""

    def __init__(self, config, n_fields):
        super().__init__(config, n_fields)
        goal_s = config.survey.cadence_min * 60

        def unvisited(d, sky, state):
            busy = (state.claimed_by[d.idx] >= 0) & (state.claimed_by[d.idx] != d.group)
            recent = d.t_start - state.last_visit[d.idx] < goal_s
            return np.where(busy | recent, -np.inf, 0.0)

        self.masks = [FeasibilityMask(config), unvisited]
        self.features = [lambda d, sky, state: -d.move_s]


def main() -> None:
    config = with_climate(load_config(), "clear")
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid)
    t0 = time.perf_counter()
    env = make_environment(config, 7, "2026-12-15", 1, "clear", cache)
    setup_s = time.perf_counter() - t0
    # With the transient sky: photometry, association, classification during the night.
    full = simulate(config, env, cache=cache)
    t0 = time.perf_counter()
    full_metrics, _w, _o, _ob = run_metrics(full, "rl", config.name, AreaLattice(grid))
    metrics_s = time.perf_counter() - t0
    # The survey alone (issue 2's reference figures), same night and weather.
    population, env.population = env.population, None
    result = simulate(config, env, cache=cache)
    metrics, _windows, _obs, _objects = run_metrics(result, "rl", config.name, AreaLattice(grid))

    # Baseline, same night, same shell: naive nearest-unvisited-field greedy.
    naive = simulate(config, env, cache=cache, scheduler=NaiveGreedy(config, grid.size))
    env.population = population
    naive_metrics, _w, _o, _ob = run_metrics(naive, "rl", config.name, AreaLattice(grid))
    ns = naive_metrics["survey"]

    s = metrics["survey"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "bench": "night", "date": "2026-12-15", "seed": 7, "weather": "clear",
        "sim_seconds": round(result.sim_seconds, 1),
        "wall_seconds": round(result.wall_seconds, 2),
        "speedup": round(result.sim_seconds / result.wall_seconds, 1),
        "setup_seconds": round(setup_s, 2),
        "peak_rss_mib": round(peak_mib, 1),
        "decision_ms": metrics["scheduler"]["decision_ms"],
        "coverage_deg2_per_30min": s["coverage_deg2_per_30min"]["median"],
        "coverage_bound_deg2_per_30min": s["coverage_bound_deg2_per_30min"]["median"],
        "coverage_fraction_of_bound": s["coverage_fraction_of_bound"],
        "median_revisit_min": s["median_revisit_min"],
        "open_shutter_fraction": s["open_shutter_fraction"],
        "median_limiting_mag_r": s["median_limiting_mag"].get("r"),
        "with_transients": {
            "wall_seconds": round(full.wall_seconds, 2),
            "speedup": round(full.sim_seconds / full.wall_seconds, 1),
            "metrics_seconds": round(metrics_s, 2),
            "sources": int(population.size),
            "detections": int(full.core.associator.det_obj.n),
            "transients": full_metrics["transients"],
            "classifier": full_metrics["classifier"]},
        "baseline_naive_greedy": {
            "median_limiting_mag_r": ns["median_limiting_mag"].get("r"),
            "coverage_deg2_per_30min": ns["coverage_deg2_per_30min"]["median"],
            "coverage_fraction_of_bound": ns["coverage_fraction_of_bound"],
            "median_revisit_min": ns["median_revisit_min"],
            "wall_seconds": round(naive.wall_seconds, 2)},
        "coverage_ratio_vs_baseline": round(s["coverage_deg2_per_30min"]["median"]
                                            / ns["coverage_deg2_per_30min"]["median"], 4),
        "targets": {"wall_seconds_max": 40, "speedup_min": 1000, "peak_rss_mib_max": 2048,
                    "coverage_deg2_min": 10000, "fraction_of_bound_min": 0.97},
    }))


if __name__ == "__main__":
    main()
