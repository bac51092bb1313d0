"""brain ask: the LLM planner from the command line."""

from __future__ import annotations

import json
import os
import sys

from brain.cli.common import (
    UsageError,
    existing_dir,
    iso_time,
)
from brain.config import load_config
from brain.planner.api import ask_daemon
from brain.planner.engine import Engine, resolve_model
from brain.planner.plan import Planner, carry_out, request_ok
from brain.planner.runstate import state_from_run


def cmd_ask(args) -> int:
    # --json: standard output holds the one JSON object and nothing else. Everything
    # else written to file descriptor 1 from here to the process's exit (vLLM's engine,
    # its subprocesses and its shutdown log at exit included) goes to standard error;
    # the object is written on a copy of the original standard output.
    json_out = _stdout_to_stderr() if args.json else None
    if not request_ok(args.request):
        raise UsageError("the request must be 1 to 1000 characters without control "
                         "characters")
    config = load_config(args.config)
    if args.state is not None:
        if not (existing_dir(args.state, "--state") / "metrics.json").is_file():
            raise UsageError(f"{args.state} is not a run directory (no metrics.json)")
        at = iso_time(args.at, "--at")

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

        api = args.api or f"http://127.0.0.1:{config.planner.api_port}"
        try:
            result = ask_daemon(api, args.request, args.execute)
        except OSError as exc:
            raise UsageError(f"no daemon API at {api} ({exc}); start `brain run`, or "
                             "plan offline with --state DIR") from None
    if json_out is not None:
        with os.fdopen(json_out, "w") as fh:
            fh.write(json.dumps(result) + "\n")
    else:
        _print_plan(result)
    return 0 if result["valid"] else 1


def _stdout_to_stderr() -> int:
    """Point file descriptor 1 at standard error for the rest of the process; return a
    descriptor of the original standard output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    return saved


def _engine(config):
    try:
        path = resolve_model(config.planner.model, config.planner.cache_dir)
        return Engine(path, config.planner.max_model_len)
    except (OSError, ImportError, ValueError) as exc:  # no model, or a bad adapter
        raise UsageError(f"planner engine: {exc}".splitlines()[0]) from None


def _print_plan(result: dict) -> None:
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
