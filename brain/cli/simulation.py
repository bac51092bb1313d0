"""brain simulate, brain replay and brain evaluate: the fast shell from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brain.cli.common import (
    UsageError,
    existing_dir,
    load_policy,
    output_dir,
)
from brain.config import config_from_dict, load_config, with_climate
from brain.core.store import open_store
from brain.evaluation.policy_training import check_seeds, evaluate_many, write_evaluation
from brain.ops.hosting import RayUnreachable
from brain.ops.runfiles import write_run
from brain.ops.survey_metrics import run_metrics
from brain.shells.fast import simulate
from observatory.sky import AreaLattice, FieldGrid
from observatory.visibility import NightCache
from simulator.environment import Environment, make_environment

# An earlier run of ours holds one of these; --out may be one (docs/cli-edges.md).
RUN_MARKS = ("metrics.json", "environment.json")
EVALUATION_MARKS = ("evaluation.json", "evaluation.csv")

def fresh_run_store(out: Path):
    """A simulation's object store: ``store.sqlite`` in its output folder, new for each
    run (a store's object ids continue from what it holds; docs/store.md)."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (out / f"store.sqlite{suffix}").unlink(missing_ok=True)
    return open_store(f"sqlite:///{out / 'store.sqlite'}")


def run_and_write(config, config_name: str, env, policy: str, out: Path, quiet: bool,
                   cache=None):

    if cache is None:
        grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
        cache = NightCache(config, grid, keep=env.nights + 1)
    store = fresh_run_store(out)
    try:
        result = simulate(config, env, progress=not quiet, cache=cache,
                          policy=load_policy(policy, env.seed), store=store,
                          stream_path=out / "stream.npz")
        metrics, windows, obs, objects = run_metrics(result, policy, config_name,
                                                     AreaLattice(cache.grid))
        write_run(out, result, metrics, windows, obs, objects)
    finally:
        store.close()
    if not quiet:
        _summary(metrics, out)
    return metrics


def _summary(m: dict, out: Path) -> None:
    s = m["survey"]
    cov = s["coverage_deg2_per_30min"]

    def f(x, fmt):
        return "n/a" if x is None else fmt.format(x)

    print(f"nights {m['n_nights']}  seed {m['seed']}  weather {m['weather']}  policy {m['policy']}")
    print(f"coverage per 30 min: median {f(cov['median'], '{:,.0f}')} deg2 over "
          f"{cov['windows']} all-dark windows "
          f"({f(s['coverage_fraction_of_bound'], '{:.1%}')} of the bound "
          f"{f(s['coverage_bound_deg2_per_30min']['median'], '{:,.0f}')} deg2)")
    print(f"exposures {s['exposures']:,}  visits {s['visits']:,}  median revisit "
          f"{f(s['median_revisit_min'], '{:.1f}')} min  open shutter "
          f"{s['open_shutter_fraction']:.1%}")
    tr, cl = m["transients"], m["classifier"]
    print(f"transients: {tr['injected']:,} injected on the sky, {tr['detected']:,} detected; "
          f"{tr['candidates']:,} candidates; classifier macro-F1 "
          f"{f(cl['macro_f1'], '{:.2f}')} against the simulator's truth")
    print(f"decision p99 {f(m['scheduler']['decision_ms']['p99'], '{:.2f}')} ms  "
          f"speed {m['sim']['speedup']:,.0f}x real time ({m['sim']['wall_seconds']:.1f} s wall)")
    print(f"wrote {out}/ (report.html, metrics.json, observations.csv, ...)")


def cmd_simulate(args) -> int:
    config = load_config(args.config)
    if args.weather == "clear":
        config = with_climate(config, "clear")
    load_policy(args.policy, args.seed)
    out = output_dir(args.out, marks=RUN_MARKS)  # inputs known good, before any work
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=args.nights + 1)
    env = make_environment(config, args.seed, args.start, args.nights, args.weather, cache)
    run_and_write(config, config.name, env, args.policy, out, args.quiet, cache)
    return 0


def cmd_replay(args) -> int:
    src, out = existing_dir(args.run_dir, "run directory"), Path(args.out)
    if args.out.strip() and out.resolve() == src.resolve():
        raise UsageError("--out must differ from the recorded run's directory")
    try:
        env = Environment.load(src)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read the environment in {src}: {exc}") from None
    if not isinstance(env.config, dict):
        raise UsageError(f"cannot read the environment in {src}: its config is not a mapping")
    config = config_from_dict(env.config, source=f"{src}/environment.json")
    load_policy(args.policy, env.seed)
    out = output_dir(args.out, marks=RUN_MARKS)
    run_and_write(config, config.name, env, args.policy, out, args.quiet)
    return 0


def cmd_evaluate(args) -> int:
    try:
        check_seeds(args.seeds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = load_config(args.config)
    for name in args.policies:
        load_policy(name, 0)
    out = output_dir(args.out, marks=EVALUATION_MARKS)
    try:
        rows = evaluate_many(config, args.seeds, args.start, args.nights, args.policies,
                             ray_address=args.ray_address)
    except RayUnreachable as exc:
        raise UsageError(str(exc)) from None
    path = write_evaluation(out, rows)
    print(f"{len(args.seeds)} seeds x {args.nights} night(s); survey coverage median "
          f"{np.median([r['coverage_deg2_per_30min'] or 0 for r in rows]):,.0f} deg2 per 30 min")
    print(f"{'policy':<12} {'reward/h median':>15} {'p25..p75':>14} {'reward median':>13} "
          f"{'spectra':>8} {'hours':>6} {'reward/open h':>13}")
    for name in args.policies:
        mine = [r for r in rows if r["policy"] == name]
        rph = np.array([r["reward_per_hour"] or 0.0 for r in mine])
        rew = np.array([r["reward"] for r in mine])
        print(f"{name:<12} {np.median(rph):>15.2f} "
              f"{np.percentile(rph, 25):>6.2f}..{np.percentile(rph, 75):<6.2f} "
              f"{np.median(rew):>13.1f} {np.median([r['spectra'] for r in mine]):>8.0f} "
              f"{np.median([r['hours'] for r in mine]):>6.1f} "
              f"{np.median([r['reward_per_open_hour'] or 0.0 for r in mine]):>13.2f}")
    print(f"wrote {path}")
    return 0
