"""Follow-up policies on held-out seeds: science reward per spectroscopic hour.

One JSON line. Runs ``brain evaluate``'s machinery (Ray tasks, one per seed: the night
simulated once, every policy's follow-up replayed over the same candidate stream) on
seeds 9001-9008 (never trained on), one night each on 2026-12-15. The in-run baselines
are greedy and random: the issue's targets are rl >= 1.3x greedy and >= 3x random in the
median reward per spectroscopic hour. Also times the whole evaluation (target: 15 min
for rl, greedy, uncertainty, random on 2 cores).
"""

from __future__ import annotations

import json
import time

import numpy as np

POLICIES = ["rl", "greedy", "uncertainty", "random", "brightest"]


def main() -> None:
    from brain.config import load_config
    from brain.evaluation.policy_training import evaluate_many

    t0 = time.perf_counter()
    rows = evaluate_many(load_config(), list(range(9001, 9009)), "2026-12-15", 1, POLICIES,
                         progress=False)
    wall = time.perf_counter() - t0
    out = {"bench": "followup", "seeds": "9001..9008", "wall_s": round(wall, 1)}
    med = {}
    for p in POLICIES:
        mine = [r for r in rows if r["policy"] == p]
        med[p] = float(np.median([r["reward_per_hour"] or 0.0 for r in mine]))
        out[p] = {"reward_per_hour_median": round(med[p], 3),
                  "reward_median": float(np.median([r["reward"] for r in mine])),
                  "reward_per_open_hour_median": round(float(np.median(
                      [r["reward_per_open_hour"] or 0.0 for r in mine])), 3),
                  "spectra_median": float(np.median([r["spectra"] for r in mine])),
                  "before_peak_median": float(np.median([r["before_peak"] for r in mine]))}
    out["rl_over_greedy"] = round(med["rl"] / med["greedy"], 3) if med["greedy"] else None
    out["rl_over_random"] = round(med["rl"] / med["random"], 3) if med["random"] else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
