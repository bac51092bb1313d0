"""Edges of the command line found by trying bad input as a new user would
(docs/cli-edges.md): each ends in one line on stderr, exit 2, no traceback, no output
left behind; plus ``--help`` showing every default, and a stopped run cleaning up."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, brain_cmd, run_brain

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


def test_classify_to_an_unwritable_place(tmp_path):
    csv = tmp_path / "lc.csv"
    csv.write_text(HEADER + ROW)
    one_line_error(_classify(str(csv), "--out", "/proc/x.json"), "classify", "/proc/x.json")
    assert not Path("/proc/x.json").exists()


def test_run_until_before_start(tmp_path):
    journal = tmp_path / "daemon" / "j.sqlite"
    proc = run_brain("run", "--start", "2026-12-15T12:00:00", "--until",
                     "2026-12-15T11:00:00", "--journal", str(journal), "--hosting", "local",
                     "--metrics-port", "0")
    one_line_error(proc, "run", "--until 2026-12-15T11:00:00", "not after",
                   "--start 2026-12-15T12:00:00")
    assert not journal.parent.exists()


def test_run_on_a_journal_that_is_not_sqlite(tmp_path):
    journal = tmp_path / "notes.txt"
    journal.write_text("my notes, not a journal\n")
    proc = run_brain("run", "--journal", str(journal), "--hosting", "local",
                     "--metrics-port", "0")
    one_line_error(proc, "run", "notes.txt", "not an SQLite file")
    assert journal.read_text() == "my notes, not a journal\n"
    assert files_under(tmp_path) == ["notes.txt"]


# Output paths -----------------------------------------------------------------------------
def test_empty_output_path_is_refused(tmp_path):
    """``--out ""`` wrote a whole run into the working directory."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    for args, command in ((["simulate", "--quiet", "--out", ""], "simulate"),
                          (["run", "--journal", "", "--hosting", "local",
                            "--metrics-port", "0"], "run"),
                          (["classify", str(REPO / "README.md"), "--out", ""], "classify")):
        proc = subprocess.run(brain_cmd(*args), cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        one_line_error(proc, command, "must not be empty")
        assert files_under(tmp_path) == [], command


def test_output_into_a_directory_of_something_else_is_refused(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("\\chapter{One}\n")
    proc = run_brain("simulate", "--quiet", "--out", str(mine))
    one_line_error(proc, "simulate", "thesis", "non-empty directory", "metrics.json")
    proc = run_brain("evaluate", "--seeds", "9001", "--out", str(mine))
    one_line_error(proc, "evaluate", "thesis", "evaluation.json")
    proc = run_brain("train", "classifier", "--out", str(mine))
    one_line_error(proc, "train", "thesis", "meta.json")
    assert files_under(tmp_path) == ["thesis", "thesis/chapter1.tex"]


def test_output_into_an_earlier_run_or_an_empty_directory_is_accepted(tmp_path):
    from brain.cli.common import output_dir
    from brain.cli.simulation import RUN_MARKS

    earlier = _recorded_run(tmp_path / "earlier")  # holds environment.json
    (earlier / "report.html").write_text("<html></html>\n")
    assert output_dir(str(earlier), marks=RUN_MARKS) == earlier
    empty = tmp_path / "empty"
    empty.mkdir()
    assert output_dir(str(empty), marks=RUN_MARKS) == empty


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


# Messages that named the wrong problem ----------------------------------------------------
def test_ask_at_names_at(tmp_path):
    (tmp_path / "metrics.json").write_text("{}\n")
    line = one_line_error(run_brain("ask", "close xl", "--state", str(tmp_path), "--at",
                                    "notatime"), "ask", "--at 'notatime'", "ISO")
    assert "--start" not in line


@pytest.mark.parametrize("command", ["run", "sim-drivers"])
def test_a_bad_endpoint_is_named_before_security(command):
    line = one_line_error(run_brain(command, "--router", "notanendpoint"), command,
                          "--router 'notanendpoint'", "tcp://HOST:PORT")
    assert "--keys" not in line
    line = one_line_error(run_brain(command, "--pub", "tcp://127.0.0.1:99999"), command,
                          "--pub")


def test_directory_where_a_file_is_expected_and_the_reverse(tmp_path):
    a_file = tmp_path / "a.txt"
    a_file.write_text("text\n")
    cases = [(["classify", str(tmp_path)], "classify", "is a directory"),
             (["simulate", "--config", str(tmp_path), "--out", str(tmp_path / "o")],
              "simulate", "is a directory"),
             (["run", "--config", str(tmp_path), "--hosting", "local"], "run",
              "is a directory"),
             (["replay", str(a_file), "--policy", "greedy", "--out", str(tmp_path / "o")],
              "replay", "is not a directory"),
             (["ask", "close xl", "--state", str(a_file)], "ask", "is not a directory"),
             (["ask", "close xl", "--state", ""], "ask", "--state must not be empty"),
             (["train", "classifier", "--from-runs", str(a_file)], "train",
              "is not a directory")]
    for args, command, needle in cases:
        line = one_line_error(run_brain(*args), command, needle)
        assert "not found" not in line, line
    assert files_under(tmp_path) == ["a.txt"]


def test_classify_reads_a_csv_with_a_byte_order_mark(tmp_path):
    import json

    csv = tmp_path / "excel.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROW + "a,60001.1,r,19.2,0.05\n").encode())
    proc = _classify(str(csv))
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)) == ["a"]


# A stopped start leaves nothing behind ----------------------------------------------------
def test_simulate_stopped_by_sigterm_removes_its_new_output(tmp_path):
    out = tmp_path / "new" / "run"
    proc = subprocess.Popen(brain_cmd("simulate", "--quiet", "--out", str(out)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t_end = time.monotonic() + 60
        while not out.exists():  # made before any work, after the inputs are checked
            assert proc.poll() is None and time.monotonic() < t_end, proc.returncode
            time.sleep(0.05)
        time.sleep(1.0)  # into the simulation
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["brain simulate: terminated"], stderr
    assert stdout == ""
    assert files_under(tmp_path) == []  # new/ too: this run made it


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (Linux: SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_simulate_stopped_by_sigterm_keeps_an_earlier_run(tmp_path):
    """Only what the stopped run created goes: an earlier run it was writing over stays."""
    earlier = _recorded_run(tmp_path / "earlier")
    before = files_under(earlier)
    proc = subprocess.Popen(brain_cmd("simulate", "--quiet", "--out", str(earlier)),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        t_end = time.monotonic() + 60
        while not _catches_sigterm(proc.pid):  # brain's handler is in place
            assert proc.poll() is None and time.monotonic() < t_end, proc.returncode
            time.sleep(0.05)
        time.sleep(3.0)  # past the checks of the inputs and --out, into the simulation
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert files_under(earlier) == before


def test_run_on_a_busy_metrics_port_leaves_no_journal_directory(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        proc = run_brain("run", "--metrics-port", str(busy.getsockname()[1]), "--journal",
                         str(tmp_path / "new" / "daemon" / "j.sqlite"), "--hosting", "local",
                         timeout=60)
    finally:
        busy.close()
    one_line_error(proc, "run", "--metrics-port")
    assert files_under(tmp_path) == []
