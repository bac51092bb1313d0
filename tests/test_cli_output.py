"""An output path that cannot be written fails at once, in one line, before any work."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args, needle", [
    (["simulate", "--quiet", "--out", "{blocker}/run"], "cannot create output directory"),
    (["classify", "{csv}", "--out", "{tmp}/missing/dir/out.json"], "not found"),
    (["classify", "{csv}", "--out", "{tmp}"], "it is a directory"),
    (["train", "classifier", "--out", "{blocker}/model"], "cannot create output directory"),
])
def test_unwritable_output_is_refused_before_work(tmp_path, args, needle):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    csv = tmp_path / "lc.csv"
    csv.write_text("object_id,mjd,band,mag,mag_err\na,60000,g,19,0.05\n")
    filled = [a.format(blocker=blocker, tmp=tmp_path, csv=csv) for a in args]
    _refused(filled, needle)


@pytest.mark.slow
def test_replay_to_unwritable_output_is_refused_before_work(tmp_path, clear_run):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    _refused(["replay", str(clear_run), "--policy", "greedy", "--out", f"{blocker}/run"],
             "cannot create output directory")


def _refused(filled: list[str], needle: str) -> None:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "brain", *filled], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert time.perf_counter() - t0 < 30  # refused before simulating or training
