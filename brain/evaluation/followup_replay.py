"""Follow-up replayed against a recorded sky: the follow-up manager and a policy over a
recorded stream of candidates (``Stream``), with the simulator's spectrographs answering
(``FollowupLoop``). Policy training and evaluation use it to try many policies on the same
nights without re-running the survey."""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from brain.core.events import Done, Failed
from brain.core.followup import FollowupManager, Stream, empty_table
from observatory.spectra import science_reward
from policies.candidates import WAIT
from simulator.spectroscopy import Spectrographs


class FollowupLoop:
    """The follow-up manager and the simulator's spectroscopic telescopes, re-run over a
    recorded stream (same minute-by-minute order as the fast shell). Use ``run(policy)``
    or step it: ``start()`` then ``decide(choice)`` until ``done``; each returns the
    next (device, table) needing a decision and the reward earned since the last one."""

    def __init__(self, config, stream: Stream, population, seed: int, cache, policy=None,
                 credit_at_decision: bool = False, time_cost_per_hour: float = 0.0):

        self.config = config
        self.stream = stream
        self.cache = cache
        self.spectro = Spectrographs(config, population, seed)
        self.manager = FollowupManager(config, policy, seed)
        self.manager.record = False  # it replays the stream; it does not record one
        self.sites = [st.site for st in self.manager.specs.values()]
        self.reward_table = config.followup.reward
        self.factor = config.followup.before_peak_factor
        # Training: credit a spectrum's reward to the decision that took it (its outcome
        # is fixed when the command is accepted; only a later closure could void it).
        self.credit_at_decision = credit_at_decision
        # Training: each spectrum also costs this much per hour of telescope time it
        # takes (slew, acquisition, exposure), charged at the decision: the other
        # programmes' use of the 4-m telescopes, so that time is not spent for little.
        self.time_cost_per_hour = time_cost_per_hour
        self.done = False
        self._gen = None

    def run(self, policy) -> FollowupManager:
        self.manager.policy = policy
        pending = self.start()
        while not self.done:
            _dev, table, _rows = pending
            pending = self.decide(policy.choose(table) if table.n else WAIT)[0]
        return self.manager

    def start(self):
        self._gen = self._loop()
        self._earned = 0.0
        return self._advance(None)

    def decide(self, choice: int):
        earned_before = self._earned
        nxt = self._advance(choice)
        return nxt, self._earned - earned_before

    def _advance(self, send):
        try:
            return self._gen.send(send) if send is not None else next(self._gen)
        except StopIteration:
            self.done = True
            return (None, empty_table(0.0, 0.0), np.zeros(0, dtype=np.int64))

    def _loop(self):
        m, spectro = self.manager, self.spectro
        snaps = self.stream.snapshots
        si = 0
        date, night, queue, seq = None, None, [], itertools.count()
        for t, d, open_flags in self.stream.ticks:
            if d != date:
                date, queue = d, []  # replies beyond a night's end are never delivered
                night, sky = self.cache.get(d)
                spectro.begin_night(sky)
            while queue and queue[0][0] < t:
                rt, _, r = heapq.heappop(queue)
                if not spectro.is_current(r):
                    continue
                if r.ok:
                    entry = spectro.complete(r)
                    if entry is not None and not self.credit_at_decision:
                        self._earned += science_reward(entry["true_class"], entry["label"],
                                                       entry["before_peak"], self.reward_table,
                                                       self.factor)
                    m.on_reply(Done(rt, r.device, r.cmd_id, r.result))
                else:
                    m.on_reply(Failed(rt, r.device, r.cmd_id, r.code, r.message))
            while si < len(snaps) and snaps[si].t <= t:
                m.update(snaps[si])
                si += 1
            open_sites = dict(zip(self.sites, open_flags, strict=True))
            cmds = m.open_close(t, open_sites, night)
            cmds += yield from m.decisions(t, night)
            for c in cmds:
                r = spectro.execute(c.device, c.name, c.args, c.cmd_id, t)
                heapq.heappush(queue, (r.t, next(seq), r))
                truth = r.result.get("_truth") if r.ok else None
                if truth is not None and self.credit_at_decision:
                    self._earned += science_reward(truth["true_class"], r.result["label"],
                                                   truth["before_peak"], self.reward_table,
                                                   self.factor)
                if r.ok and c.name == "spectrum" and self.time_cost_per_hour:
                    self._earned -= self.time_cost_per_hour * max(0.0, r.t - t) / 3600.0
