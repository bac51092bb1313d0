"""What every command shares: the one-line usage error, argument types and output checks."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
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


def iso_time(text: str | None, flag: str) -> float | None:
    """An ISO date or date-time option (UTC unless it says otherwise) as Unix seconds;
    the one-line error names ``flag``."""
    try:
        return parse_start(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO date or date-time "
                         "(e.g. 2026-12-15T12:00:00)") from None


# tcp://host:port (host a name, an IPv4 address, [IPv6] or * to bind every interface;
# port 1-65535 or * for any) or ipc://path: the endpoints the device link uses
# (docs/protocol.md).
_TCP = re.compile(r"tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\*|[0-9]{1,5})")


def zmq_endpoint(text: str, flag: str) -> str:
    m = _TCP.fullmatch(text)
    if m and (m.group(2) == "*" or 1 <= int(m.group(2)) <= 65535):
        return text
    if text.startswith("ipc://") and len(text) > len("ipc://"):
        return text
    raise UsageError(f"{flag} {text!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or "
                     "ipc://PATH)")


# Directories this process created for its output: (the topmost one it created, the one
# it was asked for). A run that is refused or stopped removes them again (main).
_created: list[tuple[Path, Path]] = []


def output_dir(path: str, flag: str = "--out", marks: tuple[str, ...] | None = ()) -> Path:
    """Create the output directory now, before any work, or fail in one line.

    An existing directory must be empty or hold an earlier output of ours: one of the
    files ``marks`` (docs/cli-edges.md); ``marks=None`` accepts any directory."""
    if not path.strip():
        raise UsageError(f"{flag} must not be empty")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {path!r} is not a directory")
    if out.is_dir():
        if marks is not None and any(out.iterdir()) and not any(
                (out / m).is_file() for m in marks):
            raise UsageError(f"{flag} {path!r} is a non-empty directory without an earlier "
                             f"output ({' or '.join(marks)}); refusing to write into it")
        return out
    top = out.absolute()
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {path!r}: {exc.strerror}") from None
    _created.append((top, out.absolute()))
    return out


def remove_created(everything: bool) -> None:
    """Remove the directories this process created: ``everything`` with what it wrote
    in them (a stopped simulate), else only those still empty (a refused start)."""
    while _created:
        top, leaf = _created.pop()
        if everything:
            shutil.rmtree(top, ignore_errors=True)
            continue
        d = leaf
        while True:
            try:
                d.rmdir()  # only when empty
            except OSError:
                break
            if d == top:
                break
            d = d.parent


def output_file(path: str, flag: str = "--out") -> Path:
    """Check that a file can be written there, before any work."""
    if not path.strip():
        raise UsageError(f"{flag} must not be empty")
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"cannot write {path!r}: it is a directory")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"cannot write {path!r}: {str(parent)!r} is not a directory")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path!r}: directory {str(parent)!r} not found")
    if out.exists():
        if not os.access(out, os.W_OK):
            raise UsageError(f"cannot write {path!r}: permission denied")
        return out
    try:  # create it and take it away again: the only sure test (e.g. /proc refuses)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {path!r}: {exc.strerror}") from None
    os.close(fd)
    out.unlink()
    return out


def existing_dir(path: str, what: str) -> Path:
    """A directory that must exist: 'not found' or 'is not a directory' in one line."""
    if not path.strip():
        raise UsageError(f"{what} must not be empty")
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {path!r} not found")
    if not p.is_dir():
        raise UsageError(f"{what} {path!r} is not a directory")
    return p


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
    start, until = iso_time(args.start, "--start"), iso_time(args.until, "--until")
    if until is not None and until <= (start if start is not None else time.time()):
        raise UsageError(f"--until {args.until} is not after " + (
            f"--start {args.start}" if start is not None else "now (no --start: real time)"))
    # The endpoints first: a mistyped one is named as such, not as a security problem.
    zmq_endpoint(args.router, "--router")
    zmq_endpoint(args.pub, "--pub")
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
