"""brain bench: the benchmarks in tests/bench, one JSON line each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from brain.cli.common import (
    UsageError,
)


def cmd_bench(args) -> int:
    bench_dir = Path(__file__).resolve().parents[2] / "tests" / "bench"
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
