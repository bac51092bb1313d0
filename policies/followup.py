"""Target selection for spectroscopic follow-up: what the policies see and the baselines.

Whenever a spectroscopic telescope is free, the follow-up manager (brain core) offers
the policy a ``CandidateTable``: every candidate that telescope could observe now (up,
away from the moon, done before dawn, not yet observed) with the classifier's
probabilities, its recent photometry and what a spectrum would cost. The policy answers
with a row index, or ``WAIT`` to leave the telescope idle for a while.

Baselines (docs/contracts.md names):

* ``random`` -- any row, uniformly (seeded);
* ``brightest`` -- the brightest candidate;
* ``greedy`` -- the highest expected reward per hour of telescope time: the
  classifier's probabilities times the reward table, times the chance that the spectrum
  returns a label at that magnitude, over slew + acquisition + exposure;
* ``uncertainty`` -- active learning: the highest entropy of the class probabilities.

The reinforcement-learning policy is in ``policies.rl``.
"""

from __future__ import annotations

import numpy as np

from policies.candidates import WAIT, CandidateTable, Policy
from policies.rl import RLPolicy


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng([seed, 0xF011])

    def choose(self, table: CandidateTable) -> int:
        return int(self.rng.integers(table.n)) if table.n else WAIT


class BrightestPolicy(Policy):
    name = "brightest"

    def choose(self, table: CandidateTable) -> int:
        return int(np.argmin(table.mag)) if table.n else WAIT


class GreedyPolicy(Policy):
    name = "greedy"

    def choose(self, table: CandidateTable) -> int:
        if not table.n:
            return WAIT
        score = table.greedy_score()
        return int(np.argmax(score)) if score.max() > 0 else WAIT


class UncertaintyPolicy(Policy):
    name = "uncertainty"

    def choose(self, table: CandidateTable) -> int:
        if not table.n:
            return WAIT
        # Among candidates bright enough to be labelled at all.
        h = np.where(table.p_label > 0, table.entropy(), -np.inf)
        return int(np.argmax(h)) if np.isfinite(h.max()) else WAIT


POLICY_NAMES = ("rl", "greedy", "uncertainty", "brightest", "random")


def make_policy(name: str, seed: int = 0, rl_dir=None) -> Policy:
    """A policy by its docs/contracts.md name; ``rl`` loads the shipped network."""
    if name == "random":
        return RandomPolicy(seed)
    if name == "brightest":
        return BrightestPolicy()
    if name == "greedy":
        return GreedyPolicy()
    if name == "uncertainty":
        return UncertaintyPolicy()
    if name == "rl":
        return RLPolicy.load(rl_dir) if rl_dir is not None else RLPolicy.load()
    raise ValueError(f"unknown policy {name!r} (choose from {', '.join(POLICY_NAMES)})")
