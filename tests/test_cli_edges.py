"""Edges of the command line found by trying bad input as a new user would
(docs/cli-edges.md): each ends in one line on stderr, exit 2, no traceback, no output
left behind; plus ``--help`` showing every default, and a stopped run cleaning up."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_brain

from brain.cli import build_parser
from brain.config import DEFAULT_CONFIG
from simulator.environment import Environment
from simulator.weather import WeatherSeries

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


# Inputs that ended in a traceback --------------------------------------------------------
def _binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 4)  # not UTF-8: 0x80 cannot start a character
    return path


def test_binary_config_for_simulate(tmp_path):
    out = tmp_path / "out"
    proc = run_brain("simulate", "--config", str(_binary(tmp_path / "a.yaml")), "--quiet",
                     "--out", str(out))
    one_line_error(proc, "simulate", "a.yaml", "not a UTF-8 text file")
    assert not out.exists()


def test_binary_config_for_run(tmp_path):
    journal = tmp_path / "daemon" / "j.sqlite"
    proc = run_brain("run", "--config", str(_binary(tmp_path / "a.yaml")), "--journal",
                     str(journal), "--hosting", "local", "--metrics-port", "0")
    one_line_error(proc, "run", "a.yaml", "not a UTF-8 text file")
    assert not journal.parent.exists()


def _recorded_run(run_dir: Path) -> Path:
    """A run's environment record (what brain simulate writes for replay), small."""
    rng = np.random.default_rng(3)
    n = 4000
    weather = WeatherSeries(t_unix=1.797e9 + 60.0 * np.arange(n), wind_mps=rng.random(n),
                            humidity=rng.random(n), rain=rng.random(n) < 0.1,
                            cloud=rng.random(n), seeing_arcsec=1 + rng.random(n),
                            dew_margin_c=rng.random(n))
    run_dir.mkdir()
    Environment(yaml.safe_load(DEFAULT_CONFIG.read_text()), 7, "2026-12-15", 1, "climate",
                {(0, "xl"): weather}).save(run_dir)
    return run_dir


def test_replay_of_a_truncated_environment(tmp_path):
    """An interrupted copy of a run: its environment.npz cut short."""
    src = _recorded_run(tmp_path / "run")
    npz = src / "environment.npz"
    with np.load(npz) as z:  # the record itself is sound before the cut
        assert len(z.files) == 7
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    out = tmp_path / "replayed"
    proc = run_brain("replay", str(src), "--policy", "greedy", "--out", str(out))
    one_line_error(proc, "replay", "environment.npz", "damaged or truncated")
    assert not out.exists()


def _classify(*args: str):
    return run_brain("classify", *args, timeout=120)


def test_classify_of_a_binary_file(tmp_path):
    proc = _classify(str(_binary(tmp_path / "lc.csv")))
    one_line_error(proc, "classify", "lc.csv", "not a UTF-8 text file")


def test_classify_refuses_an_overlong_object_id(tmp_path):
    csv = tmp_path / "lc.csv"
    csv.write_text(HEADER + ROW + "x" * 10_000 + ",60000.2,g,19.0,0.05\n")
    line = one_line_error(_classify(str(csv)), "classify", "row 3", "object_id",
                          "at most 128")
    assert len(line) < 200


# Physical ranges --------------------------------------------------------------------------
@pytest.mark.parametrize(("row", "needles"), [
    ("a,60000.2,g,1e308,0.05\n", ("row 3", "mag 1e308", "[-30, 40]")),
    ("a,60000.2,g,-31,0.05\n", ("row 3", "mag -31", "[-30, 40]")),
    ("a,60000.2,g,19.0,1e300\n", ("row 3", "mag_err", "above 20")),
    ("a,1e308,g,19.0,0.05\n", ("row 3", "mjd 1e308", "[0, 100000]")),
], ids=["mag-huge", "mag-too-bright", "err-huge", "mjd-huge"])
def test_classify_refuses_unphysical_values(tmp_path, row, needles):
    csv = tmp_path / "lc.csv"
    csv.write_text(HEADER + ROW + row)
    proc = _classify(str(csv))
    one_line_error(proc, "classify", *needles)
    assert "RuntimeWarning" not in proc.stderr


def test_classify_accepts_the_edges_of_the_ranges(tmp_path):
    import json

    csv = tmp_path / "lc.csv"
    csv.write_text(HEADER + "a,0,g,-30,20\na,100000,r,40,0.001\nb,60000,i,19,0.1\n")
    proc = _classify(str(csv))
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"a", "b"}


# A spreadsheet's CSV ---------------------------------------------------------------------
def test_classify_reads_a_csv_with_a_byte_order_mark(tmp_path):
    import json

    csv = tmp_path / "excel.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROW + "a,60001.1,r,19.2,0.05\n").encode())
    proc = _classify(str(csv))
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)) == ["a"]
