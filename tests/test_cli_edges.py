"""Edges of the command line found by trying bad input as a new user would
(docs/cli-edges.md): each ends in one line on stderr, exit 2, no traceback, no output
left behind; plus ``--help`` showing every default, and a stopped run cleaning up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import run_brain

from brain.cli import build_parser

HEADER = "object_id,mjd,band,mag,mag_err\n"
ROW = "a,60000.1,g,19.0,0.05\n"


def one_line_error(proc, command: str, *needles: str) -> str:
    """Exit 2, one stderr line ``brain <command>: error: ...`` naming every needle, no
    traceback and nothing on stdout."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"brain {command}: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == "", proc.stdout[:500]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --help shows every default ------------------------------------------------------------
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_shows_every_default(command):
    """Every option with a default (other than a flag's absence) shows it in --help."""
    proc = run_brain(command, "--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = " ".join(proc.stdout.split())  # help wraps lines anywhere
    expected = [(a.option_strings[-1], a.default) for a in _subparsers()[command]._actions
                if a.default is not None and a.default is not argparse.SUPPRESS
                and a.nargs != 0]
    for option, default in expected:
        assert isinstance(default, str | int | float), (option, default)
        assert f"(default: {default}" in text, (option, default, text)
    if command in ("simulate", "run", "evaluate"):
        assert len(expected) >= 5, expected  # the test saw the options it is about

