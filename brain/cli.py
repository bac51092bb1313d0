"""The ``brain`` command line (shared/CONTRACTS.md). Bad input exits with status 2 and
one line saying why; no traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import date
from pathlib import Path

POLICIES = ("rl", "greedy", "uncertainty", "brightest", "random")
WEATHER_MODES = ("climate", "clear")


class UsageError(Exception):
    """Bad input from the user: reported in one line."""


def _date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _policy_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in POLICIES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown policy {bad[0] if bad else text!r} "
                                         f"(choose from {', '.join(POLICIES)})")
    return list(dict.fromkeys(names))


def _seed_range(text: str) -> list[int]:
    try:
        if ".." in text:
            a, b = (int(x) for x in text.split("..", 1))
            seeds = list(range(a, b + 1))
        else:
            seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed range A..B or list: {text!r}") from None
    if not seeds or len(seeds) > 1000 or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"need 1 to 1000 non-negative seeds, got {text!r}")
    return seeds


def _bounded_int(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="brain", description="SiTian Brain: control brain for the SiTian array.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="simulate nights of the array (fast shell)")
    sim.add_argument("--config", help="array config YAML (default: the sitian-54 array)")
    sim.add_argument("--nights", type=_bounded_int(1, 366), default=1)
    sim.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=7)
    sim.add_argument("--start", type=_date, default="2026-12-15",
                     help="date of the first night (its evening), YYYY-MM-DD")
    sim.add_argument("--policy", choices=POLICIES, default="rl",
                     help="follow-up target-selection policy")
    sim.add_argument("--weather", choices=WEATHER_MODES, default="climate",
                     help="'climate': each site's climate; 'clear': every site clear")
    sim.add_argument("--out", default="out/run", help="output directory")
    sim.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    rep = sub.add_parser("replay", help="re-run a recorded environment with another policy")
    rep.add_argument("run_dir", help="directory of an earlier simulate or replay")
    rep.add_argument("--policy", choices=POLICIES, required=True)
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--quiet", action="store_true")

    cls = sub.add_parser("classify", help="classify light curves from a CSV of detections")
    cls.add_argument("file", help="CSV with columns object_id, mjd, band, mag, mag_err")
    cls.add_argument("--out", help="write the JSON here instead of standard output")

    ev = sub.add_parser("evaluate", help="compare follow-up policies over many seeds (Ray)")
    ev.add_argument("--policies", type=_policy_list, default=list(POLICIES),
                    help="comma-separated policies (default: all)")
    ev.add_argument("--seeds", type=_seed_range, default=list(range(9001, 9009)),
                    help="A..B or a comma list (default 9001..9008); training seeds refused")
    ev.add_argument("--nights", type=_bounded_int(1, 30), default=1)
    ev.add_argument("--start", type=_date, default="2026-12-15")
    ev.add_argument("--config", help="array config YAML (default: the sitian-54 array)")
    ev.add_argument("--out", default="out/evaluation", help="output directory")

    train = sub.add_parser("train", help="retrain a shipped model from simulated data")
    train.add_argument("what", choices=("classifier", "policy"), help="the model to train")
    train.add_argument("--from-runs", nargs="+", default=[], metavar="DIR",
                       help="classifier: also learn from the spectroscopic labels of "
                            "these runs (labelled.csv)")
    train.add_argument("--iterations", type=_bounded_int(1, 10_000), default=40,
                       help="policy: PPO iterations")
    train.add_argument("--n-per-class", type=_bounded_int(100, 100_000), default=8000,
                       help="training light curves per class (default 8000, as shipped)")
    train.add_argument("--seed", type=_bounded_int(0, 2**31 - 1), default=1)
    train.add_argument("--out", help="artifact directory (default: the shipped one)")

    ask = sub.add_parser("ask", help="LLM planner: a request -> validated tool calls")
    ask.add_argument("request", help="what the operator wants, in words")
    ask.add_argument("--state", metavar="DIR",
                     help="plan against the end state of a brain simulate/replay run "
                          "(default: the running daemon's API)")
    ask.add_argument("--at", help="with --state: plan at this time (ISO, UTC; default: "
                                  "the run's last exposure)")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--execute", action="store_true",
                     help="approve: carry out the plan's actions if it is valid")
    ask.add_argument("--config", help="array config YAML (default: the sitian-54 array)")
    ask.add_argument("--api", default=None,
                     help="the daemon's API (default http://127.0.0.1:<planner.api_port>)")

    bench = sub.add_parser("bench", help="run the benchmarks in tests/bench (JSON lines)")
    bench.add_argument("name", nargs="?", help="one benchmark, e.g. scheduler or night")

    run = sub.add_parser("run", help="the observatory daemon (daemon shell, SBP1 devices)")
    _link_args(run)
    run.add_argument("--metrics-port", type=_bounded_int(0, 65535), default=9180,
                     help="Prometheus /metrics on 127.0.0.1 (0: off)")
    run.add_argument("--journal", default="out/daemon/journal.sqlite",
                     help="SQLite journal (WAL); a restart continues from it")
    run.add_argument("--until", help="stop at this world time (ISO, UTC)")
    run.add_argument("--policy", choices=(*POLICIES, "none"), default="rl",
                     help="follow-up policy ('none': spectrographs stay closed)")
    run.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=7,
                     help="seed of the random follow-up policy")
    run.add_argument("--failsafe-s", type=float, default=60.0,
                     help="devices close on their own after this long without the brain")
    run.add_argument("--hosting", choices=("ray", "local"), default="ray",
                     help="models in Ray actors with the operators' API (default), or "
                          "in the daemon's process without API or planner")
    run.add_argument("--ray-address", help="join this Ray cluster (default: a local Ray)")
    run.add_argument("--api-port", type=_bounded_int(0, 65535), default=None,
                     help="operators' API on 127.0.0.1 (default: planner.api_port of "
                          "the config; 0: off)")

    drv = sub.add_parser("sim-drivers", help="serve the simulated array's devices over SBP1")
    _link_args(drv)
    drv.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=7)
    drv.add_argument("--nights", type=_bounded_int(1, 366), default=1)
    drv.add_argument("--weather", choices=WEATHER_MODES, default="climate")
    drv.add_argument("--until", help="stop at this world time (ISO, UTC)")
    drv.add_argument("--only", help="comma-separated device ids to serve (default: all)")
    drv.add_argument("--log", help="append one JSON line per command executed (rehearsal "
                                   "audits: nothing executed twice)")

    keys = sub.add_parser("keys", help="create CURVE key pairs for the brain and devices")
    keys.add_argument("dir", help="key directory (created)")
    keys.add_argument("--name", default="devices",
                      help="name of the device key pair to add (authorised at once)")
    keys.add_argument("--devices", default=None,
                      help="bind the pair to these device-id globs, comma-separated "
                           "(e.g. 'xl.*'); it gets ERROR unauthorised as any other device")
    return p


def _link_args(p) -> None:
    p.add_argument("--config", help="array config YAML (default: the sitian-54 array)")
    p.add_argument("--start", help="world clock start, ISO UTC (default: now, real time)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="world clock speed, times real time (rehearsals)")
    p.add_argument("--router", default="tcp://127.0.0.1:5550", help="the brain's device link")
    p.add_argument("--pub", default="tcp://127.0.0.1:5551", help="the brain's event feed")
    p.add_argument("--security", choices=("none", "curve"), default=None,
                   help="default: none on loopback, curve elsewhere")
    p.add_argument("--keys", help="CURVE key directory (brain keys DIR)")


def _output_dir(path: str) -> Path:
    """Create the output directory now, before any work, or fail in one line."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {path!r}: {exc.strerror}") from None
    return out


def _output_file(path: str) -> Path:
    """Check that a file can be written there, before any work."""
    out = Path(path)
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {path!r}: directory {str(out.parent)!r} not found")
    if out.is_dir():
        raise UsageError(f"cannot write {path!r}: it is a directory")
    return out


def _run_and_write(config, config_name: str, env, policy: str, out: Path, quiet: bool,
                   cache=None):
    from brain.fastshell import simulate
    from brain.metrics import run_metrics
    from brain.runfiles import write_run
    from simulator.ephemeris import NightCache
    from simulator.sky import AreaLattice, FieldGrid

    if cache is None:
        grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
        cache = NightCache(config, grid, keep=env.nights + 1)
    result = simulate(config, env, progress=not quiet, cache=cache,
                      policy=_policy(policy, env.seed))
    metrics, windows, obs, objects = run_metrics(result, policy, config_name,
                                                 AreaLattice(cache.grid))
    write_run(out, result, metrics, windows, obs, objects)
    if not quiet:
        _summary(metrics, out)
    return metrics


def _policy(name: str, seed: int):
    """The follow-up policy by name; a missing or stale RL artifact is a one-line error."""
    from policies.followup import make_policy

    try:
        return make_policy(name, seed)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _summary(m: dict, out: Path) -> None:
    s = m["survey"]
    cov = s["coverage_deg2_per_30min"]

    def f(x, fmt):
        return "n/a" if x is None else fmt.format(x)

    print(f"nights {m['nights']}  seed {m['seed']}  weather {m['weather']}  policy {m['policy']}")
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
    from brain.config import load_config, with_climate
    from brain.fastshell import make_environment
    from simulator.ephemeris import NightCache
    from simulator.sky import FieldGrid

    config = load_config(args.config)
    if args.weather == "clear":
        config = with_climate(config, "clear")
    _policy(args.policy, args.seed)
    out = _output_dir(args.out)  # after the inputs are known good, before any work
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=args.nights + 1)
    env = make_environment(config, args.seed, args.start, args.nights, args.weather, cache)
    _run_and_write(config, config.name, env, args.policy, out, args.quiet, cache)
    return 0


def cmd_replay(args) -> int:
    from brain.config import config_from_dict
    from simulator.environment import Environment

    src, out = Path(args.run_dir), Path(args.out)
    if not src.is_dir():
        raise UsageError(f"run directory {str(src)!r} not found")
    if out.resolve() == src.resolve():
        raise UsageError("--out must differ from the recorded run's directory")
    try:
        env = Environment.load(src)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read the environment in {src}: {exc}") from None
    config = config_from_dict(env.config, source=f"{src}/environment.json")
    _policy(args.policy, env.seed)
    out = _output_dir(args.out)
    _run_and_write(config, config.name, env, args.policy, out, args.quiet)
    return 0


def cmd_classify(args) -> int:
    import json

    from brain.lightcurve_io import LightCurveInputError, classification_json, read_detections_csv

    out = _output_file(args.out) if args.out else None
    try:
        table = read_detections_csv(args.file)
    except LightCurveInputError as exc:
        raise UsageError(str(exc)) from None
    from policies.classifier import ARTIFACT_DIR, TransientClassifier

    try:
        model = TransientClassifier.load()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the classifier from {ARTIFACT_DIR} ({exc}); "
                         "run `brain train classifier`") from None
    prob = model.predict(table.obj, table.mjd, table.band, table.mag, table.err,
                         len(table.object_ids))
    text = json.dumps(classification_json(table.object_ids, prob, model.classes), indent=1)
    if out is not None:
        out.write_text(text + "\n")
        print(f"classified {len(table.object_ids)} objects -> {out}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_train(args) -> int:
    import json

    only = {"policy": ("--from-runs", "--n-per-class"), "classifier": ("--iterations",)}
    given = {"--from-runs": bool(args.from_runs), "--n-per-class": args.n_per_class != 8000,
             "--iterations": args.iterations != 40}
    for flag in only[args.what]:
        if given[flag]:
            raise UsageError(f"{flag} does not apply to `train {args.what}`")
    if args.what == "policy":
        return _train_policy(args)
    from policies.classifier import ARTIFACT_DIR, train

    labelled = _read_labelled(args.from_runs)
    out = _output_dir(args.out) if args.out else ARTIFACT_DIR
    _model, report = train(n_per_class=args.n_per_class, seed=args.seed, out_dir=out,
                           progress=True, labelled=labelled)
    test = report["test"]
    print(json.dumps({"artifact": str(out), "macro_f1": test["full"]["macro_f1"],
                      "macro_f1_first_night": test["first_night"]["macro_f1"],
                      "transient_vs_variable_first_night":
                          test["first_night"]["transient_vs_variable_accuracy"],
                      "ece": test["full"]["ece"], "ece_first_night": test["first_night"]["ece"],
                      "randomised_surveys": {
                          "macro_f1": report["test_random"]["full"]["macro_f1"],
                          "macro_f1_first_night":
                              report["test_random"]["first_night"]["macro_f1"]},
                      "labelled_light_curves": report.get("n_labelled", 0),
                      "seeds": report["seeds"]}))
    return 0


def _read_labelled(dirs: list[str]):
    """The labelled light curves of earlier runs (their labelled.csv), merged."""
    from brain.lightcurve_io import read_labelled

    if not dirs:
        return None
    paths = []
    for d in dirs:
        p = Path(d) / "labelled.csv"
        if not p.is_file():
            raise UsageError(f"{d}: no labelled.csv (not a run with follow-up)")
        paths.append(p)
    try:
        return read_labelled(paths)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _train_policy(args) -> int:
    import json

    from brain.config import load_config
    from brain.policytrain import train_policy
    from policies.rl import ARTIFACT_DIR

    out = _output_dir(args.out) if args.out else ARTIFACT_DIR
    report = train_policy(load_config(), out, Path("out/policy-train"),
                          iterations=args.iterations, seed=args.seed)
    print(json.dumps({"artifact": str(out), **{k: report[k] for k in
                                               ("iterations", "seconds", "record_seconds")},
                      "final_episode_return_mean": report["episode_return_mean"][-1]}))
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from brain.config import load_config
    from brain.policytrain import check_seeds, evaluate_many, write_evaluation

    try:
        check_seeds(args.seeds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = load_config(args.config)
    for name in args.policies:
        _policy(name, 0)
    out = _output_dir(args.out)
    rows = evaluate_many(config, args.seeds, args.start, args.nights, args.policies)
    path = write_evaluation(out, rows)
    print(f"{len(args.seeds)} seeds x {args.nights} night(s); survey coverage median "
          f"{np.median([r['coverage_deg2_per_30min'] or 0 for r in rows]):,.0f} deg2 per 30 min")
    print(f"{'policy':<12} {'reward/h median':>15} {'p25..p75':>14} {'reward median':>13} "
          f"{'spectra':>8} {'hours':>6}")
    for name in args.policies:
        mine = [r for r in rows if r["policy"] == name]
        rph = np.array([r["reward_per_hour"] or 0.0 for r in mine])
        rew = np.array([r["reward"] for r in mine])
        print(f"{name:<12} {np.median(rph):>15.2f} "
              f"{np.percentile(rph, 25):>6.2f}..{np.percentile(rph, 75):<6.2f} "
              f"{np.median(rew):>13.1f} {np.median([r['spectra'] for r in mine]):>8.0f} "
              f"{np.median([r['hours'] for r in mine]):>6.1f}")
    print(f"wrote {path}")
    return 0


def cmd_ask(args) -> int:
    import json

    from brain.config import load_config
    from brain.planner import request_ok

    if not request_ok(args.request):
        raise UsageError("the request must be 1 to 1000 characters without control "
                         "characters")
    config = load_config(args.config)
    if args.state:
        from drivers.clock import parse_start

        if not Path(args.state, "metrics.json").is_file():
            raise UsageError(f"{args.state} is not a run directory (no metrics.json)")
        try:
            at = parse_start(args.at) if args.at else None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        from brain.planner import Planner, carry_out, state_from_run

        try:
            state = state_from_run(args.state, config, at)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{args.state}: {exc}".splitlines()[0]) from None
        engine = _engine(config)
        planner = Planner(config, engine)
        result = carry_out(planner.plan(args.request, state), state, planner.validator,
                           args.execute, actuator=None).to_json()
    else:
        if args.at:
            raise UsageError("--at needs --state")
        from brain.serve import ask_daemon

        api = args.api or f"http://127.0.0.1:{config.planner.api_port}"
        try:
            result = ask_daemon(api, args.request, args.execute)
        except OSError as exc:
            raise UsageError(f"no daemon API at {api} ({exc}); start `brain run`, or "
                             "plan offline with --state DIR") from None
    if args.json:
        print(json.dumps(result))
    else:
        _print_plan(result)
    return 0 if result["valid"] else 1


def _engine(config):
    from brain.llm import Engine, resolve_model

    try:
        path = resolve_model(config.planner.model, config.planner.cache_dir)
        return Engine(path, config.planner.max_model_len)
    except (OSError, ImportError, ValueError) as exc:  # no model, or a bad adapter
        raise UsageError(f"planner engine: {exc}".splitlines()[0]) from None


def _print_plan(result: dict) -> None:
    import json

    print(f"request: {result['request']}")
    for c in result["calls"]:
        print(f"  call {c['tool']}({json.dumps(c['args'])})")
    if not result["calls"]:
        print("  (no tool call)")
    print("valid" if result["valid"] else "INVALID")
    for p in result["problems"]:
        print(f"  problem: {p}")
    for r in result.get("results", []):
        print(f"  result: {json.dumps(r)[:2000]}")
    print("executed" if result["executed"] else "not executed")


def cmd_bench(args) -> int:
    bench_dir = Path(__file__).resolve().parent.parent / "tests" / "bench"
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if not scripts:
        raise UsageError(f"no benchmarks found in {bench_dir}")
    if args.name:
        scripts = [s for s in scripts if s.stem == f"bench_{args.name}"]
        if not scripts:
            names = ", ".join(s.stem[6:] for s in sorted(bench_dir.glob("bench_*.py")))
            raise UsageError(f"unknown benchmark {args.name!r}; known: {names}")
    status = 0
    for s in scripts:
        status |= subprocess.call([sys.executable, str(s)])
    return status


def _clock_args(args):
    from drivers.clock import parse_start

    if not (args.speed > 0 and args.speed <= 10_000):
        raise UsageError(f"--speed must be in (0, 10000], not {args.speed}")
    try:
        start = parse_start(args.start)
        until = parse_start(args.until)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from drivers.link import is_loopback

    security = args.security or ("none" if is_loopback(args.router) else "curve")
    if security == "none" and not (is_loopback(args.router) and is_loopback(args.pub)):
        raise UsageError("refusing security 'none' on a non-loopback address: use "
                         "--security curve --keys DIR (brain keys DIR)")
    if security == "curve" and not args.keys:
        raise UsageError("--security curve needs --keys DIR (create it with brain keys DIR)")
    return start, until, security


def cmd_run(args) -> int:
    import logging

    import zmq

    from brain.config import load_config
    from brain.daemon import run_daemon
    from drivers.link import SecurityError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start, until, security = _clock_args(args)
    if not args.failsafe_s > 0:
        raise UsageError("--failsafe-s must be positive")
    config = load_config(args.config)
    _output_dir(str(Path(args.journal).parent))
    _output_file(args.journal)
    policy = None
    if args.policy != "none":
        policy = _policy(args.policy, args.seed)  # a broken artifact: one line, now
        if args.hosting == "ray":
            policy = args.policy  # the policy actor loads it again
    if args.hosting == "local" and (args.ray_address or args.api_port):
        raise UsageError("--ray-address and --api-port need --hosting ray")
    try:
        run_daemon(config, args.journal, start, args.speed, args.metrics_port, until,
                   policy, args.router, args.pub, security, args.keys, args.hosting,
                   args.ray_address, args.api_port, args.seed)
    except zmq.ZMQError as exc:  # binding the device link or the feed
        raise UsageError(f"{exc} ({args.router}, {args.pub})".splitlines()[0]) from None
    except (SecurityError, OSError) as exc:  # these name what they refuse
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"stopped; journal {args.journal}")
    return 0


def cmd_sim_drivers(args) -> int:
    import logging
    import time as _time

    import zmq

    from brain.config import load_config, with_climate
    from brain.fastshell import make_environment
    from drivers.clock import WorldClock
    from drivers.device import DeviceHost
    from drivers.simdevices import SimArray
    from simulator.ephemeris import NightCache, night_date
    from simulator.sky import FieldGrid

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start, until, security = _clock_args(args)
    config = load_config(args.config)
    if args.weather == "clear":
        config = with_climate(config, "clear")
    clock = WorldClock(start, args.speed)
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=3)
    first = night_date(config, clock.now())
    env = make_environment(config, args.seed, first, args.nights, args.weather, cache)
    array = SimArray(config, env, cache)
    devices = array.devices()
    if args.only:
        want = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = want - {d.id for d in devices}
        if unknown:
            raise UsageError(f"unknown device {sorted(unknown)[0]!r}")
        devices = [d for d in devices if d.id in want]
    curve = _device_curve(args.keys) if security == "curve" else None
    log_file = _output_file(args.log).open("a") if args.log else None
    try:
        host = DeviceHost(devices, args.router, clock, curve=curve, follow_brain_clock=True,
                          command_log=log_file)
    except zmq.ZMQError as exc:
        raise UsageError(f"cannot connect to {args.router}: {exc}") from None
    print(f"serving {len(devices)} simulated devices to {args.router}, world clock "
          f"x{args.speed:g} from {_time.strftime('%Y-%m-%dT%H:%M:%SZ', _time.gmtime(clock.now()))}",
          flush=True)
    stop = {"now": False}
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    # The loop waits on sockets without the GIL; the photometry thread must not hold
    # it long when a command arrives or an exposure ends.
    sys.setswitchinterval(0.0002)
    try:
        host.run(lambda: stop["now"] or (until is not None and clock.now() >= until))
        array.drain()  # the last exposures' detections go out before BYE
        host.step(0)
    finally:
        host.close()
    return 0


def _device_curve(keys_dir: str):
    from drivers.keys import device_keys

    try:
        return device_keys(keys_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_keys(args) -> int:
    from drivers.keys import create_keys

    try:
        made = create_keys(args.dir, args.name, args.devices)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for path in made:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    from brain.config import ConfigError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand in the one-line error
        parser.exit(2, f"brain {args.command}: error: unrecognized arguments: "
                       f"{' '.join(extra)}\n")
    handler = {"simulate": cmd_simulate, "replay": cmd_replay, "classify": cmd_classify,
               "train": cmd_train, "bench": cmd_bench, "evaluate": cmd_evaluate,
               "run": cmd_run, "sim-drivers": cmd_sim_drivers, "keys": cmd_keys,
               "ask": cmd_ask}[args.command]
    try:
        return handler(args)
    except (UsageError, ConfigError) as exc:
        print(f"brain {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brain {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `brain classify f.csv | head`: the reader left
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
