"""The ``brain`` command line (docs/contracts.md). Bad input exits with status 2 and
one line saying why; no traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from brain.cli.common import (
    POLICIES,
    WEATHER_MODES,
    UsageError,
    bounded_int,
    iso_date,
    policy_list,
    remove_created,
    seed_range,
)
from brain.config import ConfigError


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (a flag's default is its absence)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is argparse.SUPPRESS
                or action.nargs == 0 or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="brain", description="SiTian Brain: control brain for the SiTian array.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser("simulate", help="simulate nights of the array (fast shell)")
    sim.add_argument("--config", help="array config YAML (default: the sitian-54 array)")
    sim.add_argument("--nights", type=bounded_int(1, 366), default=1,
                     help="nights to simulate (1 to 366)")
    sim.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=7,
                     help="seed of the sky, the weather and the random policy")
    sim.add_argument("--start", type=iso_date, default="2026-12-15",
                     help="date of the first night (its evening), YYYY-MM-DD")
    sim.add_argument("--policy", choices=POLICIES, default="rl",
                     help="follow-up target-selection policy")
    sim.add_argument("--weather", choices=WEATHER_MODES, default="climate",
                     help="'climate': each site's climate; 'clear': every site clear")
    sim.add_argument("--out", default="out/run",
                     help="output directory: new, empty or an earlier run's")
    sim.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    rep = sub.add_parser("replay", help="re-run a recorded environment with another policy")
    rep.add_argument("run_dir", help="directory of an earlier simulate or replay")
    rep.add_argument("--policy", choices=POLICIES, required=True,
                     help="follow-up target-selection policy")
    rep.add_argument("--out", required=True,
                     help="output directory: new, empty or an earlier run's")
    rep.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    cls = sub.add_parser("classify", help="classify light curves from a CSV of detections")
    cls.add_argument("file", help="CSV with columns object_id, mjd, band, mag, mag_err "
                     "(and optionally ra_deg, dec_deg)")
    cls.add_argument("--out", help="write the JSON here instead of standard output")

    ev = sub.add_parser("evaluate", help="compare follow-up policies over many seeds (Ray)")
    # String defaults go through their type like typed values: help shows them as typed.
    ev.add_argument("--policies", type=policy_list, default=",".join(POLICIES),
                    help="comma-separated policies")
    ev.add_argument("--seeds", type=seed_range, default="9001..9008",
                    help="A..B or a comma list; training seeds refused")
    ev.add_argument("--nights", type=bounded_int(1, 30), default=1,
                    help="nights per seed (1 to 30)")
    ev.add_argument("--start", type=iso_date, default="2026-12-15",
                    help="date of the first night (its evening), YYYY-MM-DD")
    ev.add_argument("--config", help="array config YAML (default: the sitian-54 array)")
    ev.add_argument("--out", default="out/evaluation",
                    help="output directory: new, empty or an earlier evaluation's")
    ev.add_argument("--ray-address", metavar="HOST:PORT",
                    help="join this Ray cluster and spread the seeds over its nodes "
                         "(default: a local Ray)")

    train = sub.add_parser("train", help="retrain a shipped model from simulated data")
    train.add_argument("what", choices=("classifier", "policy"), help="the model to train")
    train.add_argument("--from-runs", nargs="+", metavar="DIR",
                       help="classifier: also learn from the spectroscopic labels of "
                            "these runs (labelled.csv)")
    train.add_argument("--iterations", type=bounded_int(1, 10_000), default=40,
                       help="policy: PPO iterations")
    train.add_argument("--nights", type=bounded_int(1, 30), default=7,
                       help="policy: nights per training episode, one recorded stream per "
                            "training seed (default: %(default)s, a week of the season)")
    train.add_argument("--n-per-class", type=bounded_int(100, 100_000), default=8000,
                       help="training light curves per class (default: %(default)s, as "
                            "shipped)")
    train.add_argument("--seed", type=bounded_int(0, 2**31 - 1), default=1,
                       help="seed of the training data and the model")
    train.add_argument("--out", help="artifact directory (default: the shipped one)")
    train.add_argument("--ray-address", metavar="HOST:PORT",
                       help="policy: join this Ray cluster (default: a local Ray)")

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
    run.add_argument("--metrics-port", type=bounded_int(0, 65535), default=9180,
                     help="Prometheus /metrics on 127.0.0.1 (0: off)")
    run.add_argument("--journal", default="out/daemon/journal.sqlite",
                     help="SQLite journal (WAL); a restart continues from it")
    run.add_argument("--until", help="stop at this world time (ISO, UTC)")
    run.add_argument("--policy", choices=(*POLICIES, "none"), default="rl",
                     help="follow-up policy ('none': spectrographs stay closed)")
    run.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=7,
                     help="seed of the random follow-up policy")
    run.add_argument("--failsafe-s", type=float, default=60.0,
                     help="devices close on their own after this many seconds without "
                          "the brain")
    run.add_argument("--hosting", choices=("ray", "local"), default="ray",
                     help="'ray': models in Ray actors, with the operators' API; "
                          "'local': in the daemon's process, without API or planner")
    run.add_argument("--ray-address", help="join this Ray cluster (default: a local Ray)")
    run.add_argument("--api-port", type=bounded_int(0, 65535), default=None,
                     help="operators' API on 127.0.0.1 (default: planner.api_port of "
                          "the config; 0: off)")
    run.add_argument("--web-port", type=bounded_int(0, 65535), default=None,
                     help="the operator web page (default: ops.web_port of the config, "
                          "9181; 0: off)")
    run.add_argument("--web-token", default=None, metavar="FILE",
                     help="file holding the operators' token, needed by every action "
                          "of the web page (default: ops.web_token_file; none: the page "
                          "refuses actions); brain keys DIR --web-token writes one")

    drv = sub.add_parser("sim-drivers", help="serve the simulated array's devices over SBP1")
    _link_args(drv)
    drv.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=7,
                     help="seed of the sky and the weather (as brain simulate)")
    drv.add_argument("--nights", type=bounded_int(1, 366), default=1,
                     help="nights of sky and weather to prepare")
    drv.add_argument("--weather", choices=WEATHER_MODES, default="climate",
                     help="'climate': each site's climate; 'clear': every site clear")
    drv.add_argument("--until", help="stop at this world time (ISO, UTC)")
    drv.add_argument("--only", help="comma-separated device ids to serve (default: all)")
    drv.add_argument("--log", help="append one JSON line per command executed (rehearsal "
                                   "audits: nothing executed twice)")
    drv.add_argument("--frames", action="store_true",
                     help="render each exposure as a frame and measure it with the photometry "
                          "pipeline (a few telescopes: --only; docs/photometry.md)")
    drv.add_argument("--frame-footprint", action="store_true",
                     help="catalogue detections cropped to the frames' footprint (the "
                          "catalogue rehearsal to compare a --frames one with)")
    drv.add_argument("--frame-px", type=bounded_int(512, 8192), default=None, metavar="N",
                     help="side of the frame in 1\"-pixels, centred on the field (default "
                          "2048: 2.7 %% of a 12 deg2 field)")

    pho = sub.add_parser("photometry", help="a camera frame (FITS) to detections (CSV)")
    pho.add_argument("frame", help="FITS frame: a 2-D image with a celestial WCS")
    pho.add_argument("--reference", metavar="CAT.csv",
                     help="calibration stars, CSV with ra_deg, dec_deg, mag: refine the WCS "
                          "and fit the zero point (default: the header's WCS and MAGZP)")
    pho.add_argument("--out", metavar="FILE.csv",
                     help="write the CSV here instead of standard output")

    keys = sub.add_parser("keys", help="create CURVE key pairs for the brain and devices")
    keys.add_argument("dir", help="key directory (created)")
    keys.add_argument("--name", default="devices",
                      help="name of the device key pair to add (authorised at once)")
    keys.add_argument("--devices", default=None,
                      help="bind the pair to these device-id globs, comma-separated "
                           "(e.g. 'xl.*'); it gets ERROR unauthorised as any other device")
    keys.add_argument("--web-token", action="store_true",
                      help="write only a new operators' token for the web page, "
                           "DIR/web.token (mode 0600), instead of key pairs")
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


# command -> (module of brain.cli, function)
COMMANDS = {"simulate": ("simulation", "cmd_simulate"), "replay": ("simulation", "cmd_replay"),
            "evaluate": ("simulation", "cmd_evaluate"), "classify": ("models", "cmd_classify"),
            "train": ("models", "cmd_train"), "ask": ("planner", "cmd_ask"),
            "bench": ("bench", "cmd_bench"), "run": ("daemon", "cmd_run"),
            "sim-drivers": ("simdrivers", "cmd_sim_drivers"), "keys": ("daemon", "cmd_keys"),
            "photometry": ("photometry", "cmd_photometry")}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand in the one-line error
        parser.exit(2, f"brain {args.command}: error: unrecognized arguments: "
                       f"{' '.join(extra)}\n")
    module, name = COMMANDS[args.command]
    if args.command in BATCH:
        signal.signal(signal.SIGTERM, _terminate)
    # What a refused or stopped command created goes again (docs/cli-edges.md): all of a
    # batch command's new output directory, the empty directories of any other.
    try:
        # Each command group is imported when it runs (inside the try: a SIGTERM may
        # come while it loads): `brain run` loads no simulator and `brain classify` no
        # vLLM (heavy, optional for that command).
        handler = getattr(importlib.import_module(f"brain.cli.{module}"), name)
        return handler(args)
    except (UsageError, ConfigError) as exc:
        remove_created(everything=args.command in BATCH)
        print(f"brain {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        remove_created(everything=args.command in BATCH)
        print(f"brain {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        remove_created(everything=args.command in BATCH)
        print(f"brain {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `brain classify f.csv | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BaseException:  # a crash: no half-written output directory either
        remove_created(everything=args.command in BATCH)
        raise


# Commands that compute and write, then exit: SIGTERM stops them as Ctrl-C does. The
# long-running ones (run, sim-drivers) stop on SIGTERM in their own way.
BATCH = ("simulate", "replay", "evaluate", "classify", "train", "photometry")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a batch command unwinds."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise Terminated


if __name__ == "__main__":
    raise SystemExit(main())
