"""The fast shell: a discrete-event loop running the brain core against MiniSiTian.

No sockets and no wall clock: world time jumps from one event to the next. Each minute
of world time every site's weather station reports and the clock ticks; between
minutes, the telescopes' replies (a slew ends, a shutter closes) are delivered in time
order. Deterministic for a given environment.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brain.config import BrainConfig
from brain.core.association import DetectionBatch
from brain.core.braincore import BrainCore
from brain.core.events import DetectionsEvent, Done, Failed, Tick, Weather
from brain.core.followup import FollowupManager
from observatory.ephemeris import NightEphemeris
from observatory.sky import FieldGrid
from observatory.times import unix_to_mjd
from observatory.visibility import NightCache
from simulator.environment import Environment, night_dates
from simulator.photometry import ExposureBatch, Photometry
from simulator.spectroscopy import Spectrographs
from simulator.world import World


@dataclass
class NightRun:
    date: str
    night: NightEphemeris
    wall_s: float
    # At the night's close: its candidates (catalogue rows then, object ids kept) with
    # their predicted class and the simulator's truth (-1: artefact), objects first seen
    # tonight that are candidates, classifications made, what the store was given.
    cand_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cand_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cand_truth: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cand_nights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    candidates_new: int = 0
    classified: int = 0
    closed: dict = field(default_factory=dict)


@dataclass
class RunResult:
    config: BrainConfig
    env: Environment
    grid: FieldGrid
    core: BrainCore
    world: World
    nights: list[NightRun] = field(default_factory=list)
    stream_path: object = None  # where the follow-up's stream was written night by night

    @property
    def sim_seconds(self) -> float:
        return sum(n.night.t_end - n.night.t_begin for n in self.nights)

    @property
    def wall_seconds(self) -> float:
        return sum(n.wall_s for n in self.nights)


def simulate(config: BrainConfig, env: Environment, progress: bool = False,
             grid: FieldGrid | None = None, cache: NightCache | None = None,
             scheduler=None, policy=None, classifier=None, store=None,
             stream_path=None) -> RunResult:
    """Run the nights of ``env``. ``policy`` (a ``policies.followup.Policy``) turns on
    spectroscopic follow-up; without one the spectroscopic telescopes stay closed.
    ``store`` (brain.core.store.ObjectStore) keeps the light curves of closed nights;
    without one every detection stays in memory (short runs, tests). With
    ``stream_path`` the follow-up's stream is written there night by night (memory stays
    flat over a season); without, it stays in ``core.followup.stream``."""
    grid = grid or (cache.grid if cache else FieldGrid.tile(config.camera.fov_deg2,
                                                            config.survey.ring_fit))
    cache = cache or NightCache(config, grid, keep=env.nights + 1)
    followup = None
    world = World(config)
    if policy is not None and env.population is not None and config.spectrographs:
        followup = FollowupManager(config, policy, env.seed)
        world.attach_spectrographs(Spectrographs(config, env.population, env.seed))
    core = BrainCore(config, grid, cache, scheduler, classifier=classifier, followup=followup,
                     store=store)
    photometry = (Photometry(env.population, grid, env.seed, config.sky.bogus_per_exposure)
                  if env.population is not None else None)
    result = RunResult(config, env, grid, core, world, stream_path=stream_path)
    if stream_path is not None:
        Path(stream_path).unlink(missing_ok=True)
    dates = night_dates(env.start, env.nights)
    bar = None
    if progress:
        spans = [cache.get(d)[0] for d in dates]
        total_h = sum(n.t_end - n.t_begin for n in spans) / 3600
        bar = tqdm(total=round(total_h, 1), unit="h", desc="simulating", leave=False,
                   disable=None, mininterval=0.5,
                   bar_format="{desc} {n:.1f}/{total:.1f} sim-h |{bar}| {elapsed}<{remaining}")
    for k, d in enumerate(dates):
        t0 = time.perf_counter()
        night, sky = cache.get(d)
        weather = {s.id: env.weather[(k, s.id)] for s in config.sites}
        world.begin_night(sky, weather)
        n_cls0 = core.n_classified
        _run_night(core, world, night, weather, bar, photometry)
        world.compact()
        result.nights.append(_close_night(core, d, night, t0, n_cls0))
        if followup is not None and stream_path is not None:
            followup.stream.spill(stream_path)
    if bar is not None:
        bar.close()
    return result


class Dispatcher:
    """Commands from the core to the world, through the core's safety guard, as in the
    daemon (one safety path): a refused command never reaches a telescope; it comes back
    to the core as ``FAILED unsafe`` (``BrainCore.refuse``). Replies wait in ``queue``
    (world time order)."""

    def __init__(self, core: BrainCore, world: World):
        self.core = core
        self.world = world
        self.queue: list = []  # (t, seq, reply)
        self._seq = itertools.count()

    def __call__(self, cmds: list, t: float) -> None:
        todo = list(cmds)
        while todo:
            c = todo.pop(0)
            rule = self.core.guard(c, t)
            if rule is not None:
                todo += self.core.refuse(c, t, rule)
                continue
            r = self.world.execute(c.device, c.name, c.args, c.cmd_id, t)
            heapq.heappush(self.queue, (r.t, next(self._seq), r))


def _close_night(core: BrainCore, date: str, night, t0: float, n_cls0: int) -> NightRun:
    """The night's candidates as they stand at its end (classified where due), then the
    night goes to the store."""
    t_end = night.t_end
    core.classify_candidates()
    cand = core.candidates(t_end)
    a = core.associator
    prob = a.prob[cand]
    run = NightRun(date, night, 0.0, a.ids[cand].copy(), prob.argmax(axis=1).astype(np.int64),
                   a.truth[cand].copy(), a.n_nights[cand].copy(),
                   int(np.sum(a.first_mjd[cand] >= unix_to_mjd(night.t_begin))),
                   core.n_classified - n_cls0)
    run.closed = core.close_night(t_end)
    run.wall_s = time.perf_counter() - t0
    return run


def _run_night(core, world, night, weather, bar, photometry) -> None:
    dispatch = Dispatcher(core, world)
    queue = dispatch.queue

    t_minute = night.t_begin
    while t_minute <= night.t_end:
        while queue and queue[0][0] < t_minute:
            t, _, r = heapq.heappop(queue)
            if not world.is_current(r):
                continue
            world.complete(r)
            ev = (Done(t, r.device, r.cmd_id, r.result) if r.ok
                  else Failed(t, r.device, r.cmd_id, r.code, r.message))
            dispatch(core.handle(ev), t)
        finished = world.take_finished()
        if photometry is not None and finished:
            core.handle(DetectionsEvent(t_minute, _detect(photometry, finished, t_minute)))
        for site, series in weather.items():
            dispatch(core.handle(Weather(t_minute, site, **series.at(t_minute))), t_minute)
        dispatch(core.handle(Tick(t_minute)), t_minute)
        t_minute += 60.0
        if bar is not None:
            bar.update(1 / 60)


def _detect(photometry: Photometry, finished, t_minute: float) -> DetectionBatch:
    """The detections of a minute's exposures, as the brain receives them."""
    f, b, t, m5 = (np.array(x) for x in zip(*finished, strict=True))
    det = photometry.detect(ExposureBatch(f.astype(np.int64), b.astype(np.int64), t, m5,
                                          np.arange(len(f))), int(t_minute))
    return DetectionBatch(det.ra_deg, det.dec_deg, det.mjd, det.band, det.mag, det.mag_err,
                          det.truth, det.ref_mag)
