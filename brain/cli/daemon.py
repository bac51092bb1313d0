"""brain run, brain sim-drivers and brain keys: the daemon shell and its devices."""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

from brain.cli.common import (
    UsageError,
    load_policy,
    output_dir,
    output_file,
)
from brain.config import load_config
from brain.shells.daemon_start import StartRefused, run_daemon
from drivers.clock import parse_start
from drivers.keys import create_keys, device_keys
from drivers.link import SecurityError, is_loopback


def clock_args(args):
    if not (args.speed > 0 and args.speed <= 10_000):
        raise UsageError(f"--speed must be in (0, 10000], not {args.speed}")
    try:
        start = parse_start(args.start)
        until = parse_start(args.until)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    security = args.security or ("none" if is_loopback(args.router) else "curve")
    if security == "none" and not (is_loopback(args.router) and is_loopback(args.pub)):
        raise UsageError("refusing security 'none' on a non-loopback address: use "
                         "--security curve --keys DIR (brain keys DIR)")
    if security == "curve" and not args.keys:
        raise UsageError("--security curve needs --keys DIR (create it with brain keys DIR)")
    return start, until, security


def cmd_run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start, until, security = clock_args(args)
    if not args.failsafe_s > 0:
        raise UsageError("--failsafe-s must be positive")
    config = load_config(args.config)
    output_dir(str(Path(args.journal).parent))
    output_file(args.journal)
    policy = None
    if args.policy != "none":
        policy = load_policy(args.policy, args.seed)  # a broken artifact: one line, now
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
    except (SecurityError, OSError, StartRefused) as exc:  # these name what they refuse
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"stopped; journal {args.journal}")
    return 0


def device_curve(keys_dir: str):
    try:
        return device_keys(keys_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_keys(args) -> int:
    try:
        made = create_keys(args.dir, args.name, args.devices)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for path in made:
        print(path)
    return 0
