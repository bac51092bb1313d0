"""The gymnasium environment of spectroscopic target selection.

One episode is one recorded night (or run) of the fast shell: the follow-up manager
re-runs over the night's candidate stream against the simulator's spectroscopic
telescopes (``brain.evaluation.followup_replay.FollowupLoop``). A step is one decision of one free
telescope: the observation encodes its shortlist of candidates and the night's state
(``policies.rl.encode``), the action picks a candidate or waits, and the reward is the
science reward (docs/contracts.md) of the spectra that finished since the previous
decision. The episode ends with the night.

The environment does not import the brain: ``env_config["make_loop"](rng)`` builds a
loop (anything with ``start() -> (device, table, rows)``, ``decide(choice) ->
((device, table, rows), reward)`` and ``done``), so RLlib workers on other machines of a
Ray cluster build their own from the recorded streams.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from policies.rl import N_ACTIONS, OBS_SIZE, action_to_choice, encode


class FollowupEnv(gym.Env):
    metadata = {"render_modes": ()}  # noqa: RUF012 -- gymnasium's attribute

    def __init__(self, env_config: dict | None = None):
        env_config = env_config or {}
        self.make_loop = env_config["make_loop"]
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (OBS_SIZE,), np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self._loop = None
        self._table = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._loop = self.make_loop(self.np_random)
        _dev, self._table, _rows = self._loop.start()
        return self._obs(), {}

    def step(self, action):
        choice = action_to_choice(int(action), self._table)
        (_dev, self._table, _rows), reward = self._loop.decide(choice)
        terminated = bool(self._loop.done)
        return self._obs(), float(reward), terminated, False, {}

    def _obs(self) -> np.ndarray:
        return np.clip(encode(self._table), -10.0, 10.0).astype(np.float32)
