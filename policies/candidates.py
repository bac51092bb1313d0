"""What a follow-up policy sees and answers: the candidate table of one free
spectroscopic telescope, the policy interface (a row index, or ``WAIT``), and the
brain's estimate that a spectrum returns a label. The policies themselves are in
policies/followup.py (baselines) and policies/rl.py (the trained network)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WAIT = -1


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
    budget_left_s: float = 0.0  # of tonight's budget (inf: none)
    # Over nights (the brain's season): nights since the first detection (0: first
    # seen tonight), how much fainter than its brightest the object is now (mag, >= 0)
    # and whether that fade is beyond the errors (``peak_passed``: the peak is behind
    # it, from the brain's own photometry); the season's budget left (inf: none).
    nights_since_first: np.ndarray = field(default=None)
    fade_mag: np.ndarray = field(default=None)
    peak_passed: np.ndarray = field(default=None)
    season_left_s: float = math.inf

    def __post_init__(self):
        n = len(self.object_id)
        if self.nights_since_first is None:
            self.nights_since_first = np.zeros(n, dtype=np.int64)
        if self.fade_mag is None:
            self.fade_mag = np.zeros(n)
        if self.peak_passed is None:
            self.peak_passed = np.zeros(n, dtype=bool)

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
        p = np.clip(np.asarray(self.prob, dtype=float), 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)


def label_probability(mag, label_limit_mag: float, width_mag: float = 0.3) -> np.ndarray:
    """The brain's estimate that a spectrum labels a source of magnitude ``mag``: sure
    ``width_mag`` brighter than the limit, hopeless ``width_mag`` fainter."""
    return np.clip((label_limit_mag + width_mag - np.asarray(mag)) / (2 * width_mag), 0, 1)


# The peak has passed when the object is fainter than its brightest by three errors of
# the difference and by at least this much (photometric zero points wander a little).
PEAK_FADE_SIGMA = 3.0
PEAK_FADE_MIN_MAG = 0.15


def peak_passed(fade_mag, fade_err) -> np.ndarray:
    """Whether a fade of ``fade_mag`` (latest minus brightest, magnitudes) with error
    ``fade_err`` says the peak is past: beyond ``PEAK_FADE_SIGMA`` errors and
    ``PEAK_FADE_MIN_MAG``."""
    fade = np.asarray(fade_mag, dtype=float)
    return fade > np.maximum(PEAK_FADE_SIGMA * np.asarray(fade_err, dtype=float),
                             PEAK_FADE_MIN_MAG)


class Policy:
    name = "policy"

    def choose(self, table: CandidateTable) -> int:
        raise NotImplementedError
