"""brain run, brain sim-drivers and brain keys: the daemon shell and its devices."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import zmq

from brain.cli.common import (
    UsageError,
    clock_args,
    load_policy,
    output_dir,
    output_file,
)
from brain.config import load_config
from brain.core.store import StoreError
from brain.ops.webpage import TokenError, read_token, write_token
from brain.shells.daemon_start import StartRefused, run_daemon
from drivers.keys import create_keys
from drivers.link import SecurityError


def cmd_run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start, until, security = clock_args(args)
    if not args.failsafe_s > 0:
        raise UsageError("--failsafe-s must be positive")
    if args.hosting == "local" and (args.ray_address or args.api_port):
        raise UsageError("--ray-address and --api-port need --hosting ray")
    config = load_config(args.config)
    policy = None
    if args.policy != "none":
        policy = load_policy(args.policy, args.seed)  # a broken artifact: one line, now
        if args.hosting == "ray":
            policy = args.policy  # the policy actor loads it again
    token = args.web_token or config.ops.web_token_file
    if token is not None:
        try:
            read_token(token)  # a missing or bad file: one line, now
        except TokenError as exc:
            raise UsageError(f"--web-token: {exc}") from None
    elif not ipaddress.ip_address(config.ops.web_host).is_loopback and (
            config.ops.web_port if args.web_port is None else args.web_port):
        raise UsageError(f"ops.web_host {config.ops.web_host} is not loopback: the page "
                         "needs a token there (--web-token FILE)")
    _check_journal(args.journal)  # the last check: it makes the journal's directory
    try:
        run_daemon(config, args.journal, start, args.speed, args.metrics_port, until,
                   policy, args.router, args.pub, security, args.keys, args.hosting,
                   args.ray_address, args.api_port, args.seed, args.failsafe_s,
                   web_port=args.web_port, web_token=token)
    except zmq.ZMQError as exc:  # binding the device link or the feed
        raise UsageError(f"{exc} ({args.router}, {args.pub})".splitlines()[0]) from None
    except (SecurityError, OSError, StartRefused, StoreError) as exc:  # these name it
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"stopped; journal {args.journal}")
    return 0


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_journal(path: str) -> None:
    """The journal's directory is made (main removes it again, if still empty, when the
    start is refused); an existing journal must be an SQLite file."""
    if not path.strip():
        raise UsageError("--journal must not be empty")
    journal = Path(path)
    if journal.is_dir():
        raise UsageError(f"--journal {path!r} is a directory")
    output_dir(str(journal.parent), "--journal's directory", marks=None)
    output_file(path, "--journal")
    if journal.is_file() and journal.stat().st_size > 0:
        try:
            with journal.open("rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise UsageError(f"cannot read --journal {path!r}: {exc.strerror}") from None
        if head != SQLITE_HEADER:
            raise UsageError(f"--journal {path!r} exists and is not an SQLite file")


def cmd_keys(args) -> int:
    try:
        made = ([write_token(Path(args.dir) / "web.token")] if args.web_token else
                create_keys(args.dir, args.name, args.devices))
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for path in made:
        print(path)
    return 0
