"""Target selection for spectroscopic follow-up: what the policies see and the baselines.

Whenever a spectroscopic telescope is free, the follow-up manager (brain core) offers
the policy a ``CandidateTable``: every candidate that telescope could observe now (up,
away from the moon, done before dawn, not yet observed) with the classifier's
probabilities, its recent photometry and what a spectrum would cost. The policy answers
with a row index, or ``WAIT`` to leave the telescope idle for a while.

Baselines (shared/CONTRACTS.md names):

* ``random`` -- any row, uniformly (seeded);
* ``brightest`` -- the brightest candidate;
* ``greedy`` -- the highest expected reward per hour of telescope time: the
  classifier's probabilities times the reward table, times the chance that the spectrum
  returns a label at that magnitude, over slew + acquisition + exposure;
* ``uncertainty`` -- active learning: the highest entropy of the class probabilities.

The reinforcement-learning policy is in ``policies.rl``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.lightcurves import CLASSES

WAIT = -1
REWARD_VECTOR_CLASSES = CLASSES


@dataclass
class CandidateTable:
    """Candidates one spectroscopic telescope could observe now (one row each).

    Times in seconds, magnitudes AB; ``prob`` is (rows, len(CLASSES)).
    """

    object_id: np.ndarray  # int: the brain's object ids
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mag: np.ndarray  # latest magnitude (r, else the band seen last)
    slope_mag_per_day: np.ndarray  # recent trend; negative = brightening
    age_days: np.ndarray  # since the first detection
    n_det: np.ndarray
    n_nights: np.ndarray
    prob: np.ndarray
    alt_deg: np.ndarray  # now, from this telescope's site
    move_s: np.ndarray  # slew + settle + acquisition
    exposure_s: np.ndarray
    window_s: np.ndarray  # time left before the target sets or dawn comes
    p_label: np.ndarray  # chance that the spectrum gives a label at this magnitude
    expected_reward: np.ndarray  # sum over classes of prob x reward (no phase bonus)
    # The telescope's situation.
    night_left_s: float = 0.0  # dark time left tonight at this site
    budget_left_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.object_id)

    @property
    def total_s(self) -> np.ndarray:
        return self.move_s + self.exposure_s

    def greedy_score(self) -> np.ndarray:
        """Expected reward per hour of telescope time."""
        return self.expected_reward * self.p_label / (self.total_s / 3600.0)

    def entropy(self) -> np.ndarray:
        p = np.clip(self.prob, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)


def label_probability(mag, label_limit_mag: float, width_mag: float = 0.3) -> np.ndarray:
    """The brain's estimate that a spectrum labels a source of magnitude ``mag``: sure
    ``width_mag`` brighter than the limit, hopeless ``width_mag`` fainter."""
    return np.clip((label_limit_mag + width_mag - np.asarray(mag)) / (2 * width_mag), 0, 1)


class Policy:
    name = "policy"

    def choose(self, table: CandidateTable) -> int:
        raise NotImplementedError


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
    """A policy by its CONTRACTS.md name; ``rl`` loads the shipped network."""
    if name == "random":
        return RandomPolicy(seed)
    if name == "brightest":
        return BrightestPolicy()
    if name == "greedy":
        return GreedyPolicy()
    if name == "uncertainty":
        return UncertaintyPolicy()
    if name == "rl":
        from policies.rl import RLPolicy

        return RLPolicy.load(rl_dir) if rl_dir is not None else RLPolicy.load()
    raise ValueError(f"unknown policy {name!r} (choose from {', '.join(POLICY_NAMES)})")
