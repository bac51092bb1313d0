"""The reinforcement-learning target-selection policy: observation encoding and inference.

The policy is offered the ``SHORTLIST`` observable candidates of highest static priority
(``max_candidates``; see ``brain.core.followup``) and answers with one of them or ``WAIT``.
Each candidate is described by ``N_FEATURES`` numbers: what greedy knows (expected
reward, chance of a label, cost in telescope time) plus what greedy ignores (the
brightness trend -- a brightening transient is before its peak and earns twice --, age,
nights seen and nights since the first detection, how far it has faded from its
brightest and whether its peak has passed by the brain's photometry, the classifier's
confidence, how long the target stays up) and the telescope's state (dark time, the
night's and the season's budget left). The network, trained with RLlib PPO on episodes
of several nights (``brain train policy``), is exported to a small ``.npz`` of weights
and evaluated here with numpy: no RLlib, no torch at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES
from policies.candidates import WAIT, CandidateTable, Policy

SHORTLIST = 16
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts" / "policy"

_GROUPS = (("KN",), ("TDE",), ("SLSN",), ("uLens",), ("SNIbc",), ("SNIa", "SNII"),
           ("CV", "Flare", "AGN"), ("RRL", "EB", "DSCT", "LPV"))
_GROUP_MATRIX = np.array([[c in g for g in _GROUPS] for c in CLASSES], dtype=float)
N_BASE = 17
N_FEATURES = N_BASE + len(_GROUPS)
N_GLOBAL = 4
SEASON_SCALE_S = 100 * 3600.0  # season budgets beyond 100 h look unlimited
OBS_SIZE = SHORTLIST * N_FEATURES + N_GLOBAL
N_ACTIONS = SHORTLIST + 1  # the last one waits


def encode(table: CandidateTable) -> np.ndarray:
    """The observation vector (float32, ``OBS_SIZE``) of a candidate table; rows beyond
    the first ``SHORTLIST`` are ignored, missing rows are zeros (``valid`` = 0)."""
    n = min(table.n, SHORTLIST)
    f = np.zeros((SHORTLIST, N_FEATURES), dtype=np.float32)
    if n:
        s = slice(0, n)
        p = np.asarray(table.prob[s], dtype=np.float64)
        score = table.greedy_score()[s]
        ent = -(np.clip(p, 1e-12, 1) * np.log(np.clip(p, 1e-12, 1))).sum(axis=1)
        cols = [
            np.ones(n),  # valid
            np.log1p(score) / 3.0,
            table.expected_reward[s] / 20.0,
            table.p_label[s],
            (table.mag[s] - 19.0) / 2.0,
            np.tanh(table.slope_mag_per_day[s]),
            (table.slope_mag_per_day[s] < -0.05).astype(float),
            np.log1p(table.age_days[s]) / 2.0,
            np.log1p(table.n_nights[s]) / 2.0,
            np.log1p(table.n_det[s]) / 5.0,
            table.total_s[s] / 3600.0,
            np.minimum(table.window_s[s], 8 * 3600) / (8 * 3600),
            p.max(axis=1),
            ent / np.log(len(CLASSES)),
            np.log1p(table.nights_since_first[s]) / 2.0,
            np.tanh(table.fade_mag[s]),
            table.peak_passed[s].astype(float),
        ]
        f[:n, :N_BASE] = np.stack(cols, axis=1)
        f[:n, N_BASE:] = p @ _GROUP_MATRIX
    g = np.array([min(table.night_left_s, 14 * 3600) / (14 * 3600),
                  min(table.budget_left_s, 14 * 3600) / (14 * 3600),
                  n / SHORTLIST,
                  min(table.season_left_s, SEASON_SCALE_S) / SEASON_SCALE_S],
                 dtype=np.float32)
    return np.concatenate([f.ravel(), g])


def action_to_choice(action: int, table: CandidateTable) -> int:
    """Network action -> table row, or WAIT (the wait action, or an empty slot)."""
    a = int(action)
    return a if a < min(table.n, SHORTLIST) else WAIT


class RLPolicy(Policy):
    """The exported network: a multilayer perceptron over ``encode(table)``; the action
    is the highest logit (deterministic at run time)."""

    name = "rl"
    max_candidates = SHORTLIST

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], activation: str = "tanh",
                 meta: dict | None = None):
        self.layers = layers
        self.activation = activation
        self.meta = meta or {}

    @classmethod
    def load(cls, directory: Path | str = ARTIFACT_DIR) -> RLPolicy:
        d = Path(directory)
        path = d / "policy.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no trained policy at {path} (run `brain train policy`)")
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("obs_size") != OBS_SIZE or meta.get("n_actions") != N_ACTIONS:
            raise ValueError(f"{path}: trained for another observation layout; retrain it")
        with np.load(path) as z:
            layers = [(z[f"w{k}"], z[f"b{k}"]) for k in range(int(z["n_layers"]))]
        return cls(layers, meta.get("activation", "tanh"), meta)

    def save(self, directory: Path | str, meta: dict) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {"n_layers": np.array(len(self.layers))}
        for k, (w, b) in enumerate(self.layers):
            arrays[f"w{k}"], arrays[f"b{k}"] = w.astype(np.float32), b.astype(np.float32)
        np.savez_compressed(d / "policy.npz", **arrays)
        meta = dict(meta, obs_size=OBS_SIZE, n_actions=N_ACTIONS, activation=self.activation)
        (d / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    def logits(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        for k, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if k < len(self.layers) - 1:
                x = np.tanh(x) if self.activation == "tanh" else np.maximum(x, 0)
        return x

    def choose(self, table: CandidateTable) -> int:
        if not table.n:
            return WAIT
        return action_to_choice(int(np.argmax(self.logits(encode(table)))), table)
