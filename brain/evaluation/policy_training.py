"""Training and evaluation of target-selection policies over the fast shell, on Ray.

* ``record`` runs the fast shell for one seed and keeps what follow-up needs: the
  environment (sky, weather) and the candidate ``Stream`` (brain.core.followup).
* ``train_policy`` records the training nights as Ray tasks, then trains the RL policy
  with RLlib PPO on ``policies.env.FollowupEnv`` and exports the network to
  ``policies/artifacts/policy`` (loaded at run time without RLlib).
* ``evaluate`` runs seeds as Ray tasks: each task simulates the night(s) once and
  replays every policy's follow-up over the same candidate stream, so all policies face
  the same sky, weather and candidates. Each row names the node that ran it.

Both run on a local Ray or join a cluster (``ray_address``, docs/runbook.md): the tasks
are spread over its nodes, and the recorded training nights come back to the driver's
disk, where PPO's env runner (kept on the driver's machine) reads them.

Seeds: training uses 1001-1008 (validation 2001-2004); evaluation uses 9001 and up.
They never overlap (``check_seeds``).
"""

from __future__ import annotations

import csv
import json
import re
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brain.config import config_from_dict
from brain.core.followup import followup_rows, followup_summary
from brain.evaluation.followup_replay import FollowupLoop, Stream
from brain.ops.hosting import connect
from brain.ops.runfiles import EVALUATION_COLUMNS
from brain.ops.survey_metrics import run_metrics
from brain.shells.fast import simulate
from observatory.sky import AreaLattice, FieldGrid
from observatory.visibility import NightCache
from policies.env import FollowupEnv
from policies.followup import GreedyPolicy, make_policy
from policies.rl import OBS_SIZE, RLPolicy
from simulator.environment import Environment, make_environment

TRAIN_SEEDS = tuple(range(1001, 1009))
VALID_SEEDS = tuple(range(2001, 2005))
TRAIN_DATES = ("2026-11-20", "2026-12-05", "2027-01-10", "2027-02-08")
# evaluation.csv: the contract's columns, then where each seed ran (an extension).
NODE_COLUMNS = ("node", "node_id")
TRAIN_NIGHTS = 7  # nights per training episode (one stream per seed)
# Streams of several nights: two seeds only (a night of the full array costs minutes of a CPU).
MULTI_NIGHT_SEEDS = (1001, 1003)
# Each spectrum costs this much reward per hour of telescope time in training (the 4-m
# telescopes' time is worth something elsewhere): the policy learns to leave a telescope
# idle rather than spend an hour on a spectrum expected to earn less.
TIME_COST_PER_HOUR = 2.0


def check_seeds(seeds) -> None:
    bad = sorted(set(seeds) & (set(TRAIN_SEEDS) | set(VALID_SEEDS)))
    if bad:
        raise ValueError(f"seeds {bad[0]}..{bad[-1]} are training seeds; evaluate on others "
                         f"(e.g. 9001..9008)")


def _grid_cache(config, nights):
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    return NightCache(config, grid, keep=nights + 1)


def record(config, seed: int, start: str, nights: int, out_dir: Path | None = None,
           survey_metrics: bool = True):
    """Simulate and return (env, stream, survey metrics, night cache); with ``out_dir``,
    save the environment and the stream there. Training needs no survey metrics."""

    cache = _grid_cache(config, nights)
    env = make_environment(config, seed, start, nights, "climate", cache)
    result = simulate(config, env, cache=cache, policy=GreedyPolicy())
    stream = result.core.followup.stream
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        env.save(out_dir)
        stream.save(out_dir / "stream.npz")
    if not survey_metrics:
        return env, stream, {}, cache

    m, *_ = run_metrics(result, "greedy", config.name, AreaLattice(cache.grid))
    survey = {"coverage_deg2_per_30min": m["survey"]["coverage_deg2_per_30min"]["median"],
              "macro_f1": m["classifier"]["macro_f1"]}
    return env, stream, survey, cache


def replay_followup(config, env, stream, cache, policy):
    """The follow-up of ``policy`` over a recorded stream: (metrics, rows)."""

    loop = FollowupLoop(config, stream, env.population, env.seed, cache)
    manager = loop.run(policy)
    rows = followup_rows(manager, loop.spectro.log)
    return followup_summary(manager, rows, stream.ticks), rows


def evaluate_seed(config_data: dict, seed: int, start: str, nights: int,
                  policies: list[str]) -> list[dict]:
    """One evaluation task: simulate once, then every policy's follow-up."""

    config = config_from_dict(config_data)
    env, stream, survey, cache = record(config, seed, start, nights)
    where = node_of_task()
    rows = []
    for name in policies:
        t0 = time.perf_counter()
        m, _ = replay_followup(config, env, stream, cache, make_policy(name, seed))
        rows.append({"policy": name, "seed": seed, "spectra": m["spectra"],
                     "hours": m["hours"], "reward": m["reward"],
                     "reward_per_hour": m["reward_per_hour"],
                     "coverage_deg2_per_30min": survey["coverage_deg2_per_30min"],
                     "macro_f1": survey["macro_f1"],
                     "reward_per_open_hour": m["reward_per_open_hour"],
                     "before_peak": m["before_peak"], "labelled": m["labelled"],
                     "followup_seconds": time.perf_counter() - t0, **where})
    return rows


def node_of_task() -> dict:
    """Where the calling Ray task runs: the host's name, the node's IP and its Ray id."""
    import ray  # lazy: heavy optional library

    if not ray.is_initialized():  # called outside Ray
        return {"node": socket.gethostname(), "node_ip": "", "node_id": ""}
    return {"node": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
            "node_id": ray.get_runtime_context().get_node_id()}


# Training ----------------------------------------------------------------------------
class StreamLoops:
    """Builds a ``FollowupLoop`` over one of the recorded streams (chosen by the env's
    random generator); loads streams and ephemerides lazily, once per worker process."""

    def __init__(self, dirs: list[str], time_cost_per_hour: float = 0.0):
        self.dirs = [str(d) for d in dirs]
        self.time_cost_per_hour = time_cost_per_hour
        self._cache = {}

    def _load(self, d: str):
        if d not in self._cache:
            env = Environment.load(Path(d))
            config = config_from_dict(env.config)
            if "night_cache" not in self._cache:
                self._cache["night_cache"] = _grid_cache(config, 63)
            self._cache[d] = (config, env, Stream.load(Path(d) / "stream.npz"))
        return self._cache[d]

    def __call__(self, rng):
        d = self.dirs[int(rng.integers(len(self.dirs)))]
        config, env, stream = self._load(d)
        loop = FollowupLoop(config, stream, env.population, env.seed,
                            self._cache["night_cache"], credit_at_decision=True,
                            time_cost_per_hour=self.time_cost_per_hour)
        loop.manager.policy = _Shortlist(RLPolicy.max_candidates)
        return loop


class _Shortlist:
    """Stands in for the policy inside the loop: asks for the RL shortlist."""

    def __init__(self, k: int):
        self.max_candidates = k


def record_streams(config, seeds, dates, out_root: Path, progress: bool = True,
                   ray_address: str | None = None, nights: int = 1) -> list[Path]:
    """Record one stream of ``nights`` nights per seed (training seed 1001 + k starts on
    ``dates[k mod len(dates)]``; kept in ``out_root/seed-S`` or ``out_root/n{nights}-seed-S``)
    as Ray tasks, spread over the cluster's nodes; each task returns its files, written
    here under ``out_root`` (a node's own disk is not the driver's)."""
    import ray  # lazy: heavy optional library

    connect(ray_address)
    todo, dirs = {}, []
    task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_record_task)
    for seed in seeds:
        d = out_root / (f"seed-{seed}" if nights == 1 else f"n{nights}-seed-{seed}")
        dirs.append(d)
        if (d / "stream.npz").is_file():
            continue
        start = dates[(seed - TRAIN_SEEDS[0]) % len(dates)]
        todo[task.remote(config.model_dump(mode="json"), seed, start, nights)] = d
    for k, (ref, d) in enumerate(todo.items()):
        files = ray.get(ref)
        d.mkdir(parents=True, exist_ok=True)
        for name in sorted(files, key=lambda n: n == "stream.npz"):  # the stream last:
            (d / name).write_bytes(files[name])  # it marks a complete recording
        if progress:
            print(f"recorded {k + 1}/{len(todo)} training streams ({nights} night(s) each)",
                  flush=True)
    return dirs


def _record_task(config_data, seed, start, nights=1) -> dict[str, bytes]:
    """Record ``nights`` nights into a scratch directory of the node; return its files."""
    with tempfile.TemporaryDirectory(prefix="sitian-record-") as tmp:
        record(config_from_dict(config_data), seed, start, nights, Path(tmp),
               survey_metrics=False)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def train_policy(config, out_dir: Path, work_dir: Path, iterations: int = 60,
                 seeds=None, progress: bool = True, seed: int = 0,
                 ray_address: str | None = None, nights: int = TRAIN_NIGHTS,
                 time_cost_per_hour: float = TIME_COST_PER_HOUR, env_runners: int = 2) -> dict:
    """Record the training streams (``nights`` nights per seed: an episode is a week of
    the season by default; seeds: 1001-1008 for single nights, the first
    ``MULTI_NIGHT_SEEDS`` for longer streams), train PPO with ``env_runners`` workers,
    export the network; returns the report. With ``ray_address``, on that cluster: the
    recording spreads over its nodes."""
    ray = connect(ray_address)  # first: a cluster that cannot be joined is refused at once
    if seeds is None:
        seeds = TRAIN_SEEDS if nights == 1 else MULTI_NIGHT_SEEDS
    import torch  # lazy: heavy optional library
    from ray.rllib.algorithms.ppo import PPOConfig  # lazy: heavy optional library

    t0 = time.time()
    dirs = record_streams(config, seeds, TRAIN_DATES, work_dir / "streams", progress,
                          ray_address=ray_address, nights=nights)
    t_record = time.time() - t0
    # The env runner reads the streams from this machine's disk: it stays here.
    here = {f"node:{ray.util.get_node_ip_address()}": 0.001}
    torch.manual_seed(seed)
    algo_config = (
        PPOConfig()
        .environment(FollowupEnv, env_config={"make_loop": StreamLoops(
            dirs, time_cost_per_hour)})
        .env_runners(num_env_runners=env_runners, num_envs_per_env_runner=1,
                     rollout_fragment_length="auto", sample_timeout_s=1800,
                     custom_resources_per_env_runner=here)
        .training(lr=1e-3, gamma=0.9, lambda_=0.9, train_batch_size_per_learner=1500,
                  minibatch_size=250, num_epochs=8, entropy_coeff=0.005, clip_param=0.2,
                  vf_clip_param=100.0)
        .rl_module(model_config={"fcnet_hiddens": [64, 64], "fcnet_activation": "tanh",
                                 "vf_share_layers": False})
        .debugging(seed=seed)
    )
    algo = algo_config.build_algo()
    history = []
    for it in range(iterations):
        res = algo.train()
        ret = res.get("env_runners", {}).get("episode_return_mean")
        history.append(None if ret is None else float(ret))
        if progress:
            print(f"iteration {it + 1}/{iterations}: mean night reward "
                  f"{'n/a' if ret is None else f'{ret:.1f}'}", flush=True)
    module = algo.get_module()
    policy = export_module(module)
    algo.stop()
    report = {"iterations": iterations, "train_seeds": list(seeds), "nights": nights,
              "time_cost_per_hour": time_cost_per_hour,
              "train_dates": list(TRAIN_DATES), "episode_return_mean": history,
              "record_seconds": round(t_record), "seconds": round(time.time() - t0)}
    policy.save(out_dir, report)
    return report


def export_module(module):
    """The actor's MLP (encoder + policy head) of an RLlib PPO torch module as numpy
    layers; checked against the module's own forward pass."""
    import torch  # lazy: heavy optional library

    sd = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    enc = sorted((k for k in sd if "encoder" in k and "critic" not in k and k.endswith("weight")),
                 key=_layer_index)
    head = sorted((k for k in sd if k.startswith("pi.") and k.endswith("weight")),
                  key=_layer_index)
    layers = [(sd[k].T.copy(), sd[k[:-len("weight")] + "bias"].copy()) for k in enc + head]
    policy = RLPolicy(layers, "tanh")
    x = np.random.default_rng(0).normal(0, 0.5, (32, OBS_SIZE)).astype(np.float32)
    with torch.no_grad():
        out = module.forward_inference({"obs": torch.from_numpy(x)})
    ref = out["action_dist_inputs"].numpy()
    got = np.stack([policy.logits(r) for r in x])
    if not np.allclose(ref, got, atol=1e-4):
        raise RuntimeError("exported network differs from the RLlib module "
                           f"(max error {np.abs(ref - got).max():.2e}; layers {enc + head})")
    return policy


def _layer_index(key: str):
    return [int(x) for x in re.findall(r"\d+", key)]


def write_evaluation(out_dir: Path, rows: list[dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "evaluation.csv"
    columns = (*EVALUATION_COLUMNS, *NODE_COLUMNS)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            values = [r.get(c, "") for c in columns]
            w.writerow([v if not isinstance(v, float) else f"{v:.6g}" for v in values])
    (out_dir / "evaluation.json").write_text(json.dumps(rows, indent=1) + "\n")
    return path


def evaluate_many(config, seeds, start: str, nights: int, policies: list[str],
                  progress: bool = True, ray_address: str | None = None) -> list[dict]:
    """Every seed as a Ray task (each simulates once and replays every policy), spread
    over the nodes of the cluster at ``ray_address`` (default: a local Ray)."""
    import ray  # lazy: heavy optional library

    check_seeds(seeds)
    connect(ray_address)
    task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(evaluate_seed)
    data = config.model_dump(mode="json")
    refs = {task.remote(data, s, start, nights, list(policies)): s for s in seeds}
    rows, pending = [], list(refs)
    bar = None
    if progress:
        bar = tqdm(total=len(refs), unit="seed", desc="evaluating", leave=False, disable=None)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rows += ray.get(done[0])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    order = {p: k for k, p in enumerate(policies)}
    return sorted(rows, key=lambda r: (order[r["policy"]], r["seed"]))
