"""What every command shares: the one-line usage error, argument types and output checks."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from drivers.clock import parse_start
from drivers.endpoint import is_loopback
from drivers.keys import device_keys
from policies.followup import make_policy


class UsageError(Exception):
    """Bad input from the user: reported in one line."""



def iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None



def policy_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in POLICIES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown policy {bad[0] if bad else text!r} "
                                         f"(choose from {', '.join(POLICIES)})")
    return list(dict.fromkeys(names))



def seed_range(text: str) -> list[int]:
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



def bounded_int(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse



def output_dir(path: str) -> Path:
    """Create the output directory now, before any work, or fail in one line."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {path!r}: {exc.strerror}") from None
    return out



def output_file(path: str) -> Path:
    """Check that a file can be written there, before any work."""
    out = Path(path)
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {path!r}: directory {str(out.parent)!r} not found")
    if out.is_dir():
        raise UsageError(f"cannot write {path!r}: it is a directory")
    return out



def load_policy(name: str, seed: int):
    """The follow-up policy by name; a missing or stale RL artifact is a one-line error."""

    try:
        return make_policy(name, seed)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None



POLICIES = ("rl", "greedy", "uncertainty", "brightest", "random")



WEATHER_MODES = ("climate", "clear")


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


def device_curve(keys_dir: str):
    try:
        return device_keys(keys_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
