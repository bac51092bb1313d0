"""`brain classify` input: every bad CSV gives one line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEADER = "object_id,mjd,band,mag,mag_err\n"


def _classify(tmp_path: Path, text: str | None, name: str = "in.csv"):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    return subprocess.run([sys.executable, "-m", "brain", "classify", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("text, needle", [
    ("", "empty file"),
    ("object_id,mjd,band,mag\n" "a,60000,g,20\n", "missing column(s) mag_err"),
    (HEADER, "no detections"),
    (HEADER + "a,60000,z,20,0.1\n", "unknown band 'z'"),
    (HEADER + "a,sixty,g,20,0.1\n", "mjd is not a number"),
    (HEADER + "a,60000,g,nan,0.1\n", "mag is not finite"),
    (HEADER + "a,60000,g,20,-0.1\n", "mag_err must be positive"),
    (HEADER + "a,60000,g\n", "3 fields, expected 5"),
    (HEADER + ",60000,g,20,0.1\n", "empty object_id"),
    pytest.param(HEADER + "x" * 200_000 + ",60000,g,20,0.1\n",
                 "row 2: field larger than field limit", id="huge-field"),
    (HEADER + "a,60000,g,20,25\n", "mag_err 25 is above 20 mag"),
    (HEADER + "a,-5,g,20,0.1\n", "mjd -5 is outside [0, 100000]"),
])
def test_bad_csv_one_line_error(tmp_path, text, needle):
    r = _classify(tmp_path, text)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_missing_file(tmp_path):
    r = _classify(tmp_path, None, "nope.csv")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
