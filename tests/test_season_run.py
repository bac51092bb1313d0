"""A season through the command line: `brain simulate --nights 3` writes the per-night
list, the objects' season columns, a stream written night by night and the store."""

from __future__ import annotations

import csv
import json
import sqlite3
import zipfile
from datetime import date, timedelta

import pytest
import yaml

from brain.core.followup import Stream
from tests.conftest import REPO, run_brain

NIGHTS = 3


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    root = tmp_path_factory.mktemp("season")
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "season-xl"
    d["sites"] = [dict(d["sites"][0], groups=3)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("sky", {})["density_scale"] = 0.3
    cfg = root / "season.yaml"
    cfg.write_text(yaml.safe_dump(d))
    out = root / "run"
    run_brain("simulate", "--config", str(cfg), "--nights", str(NIGHTS), "--seed", "11",
              "--start", "2026-12-15", "--weather", "clear", "--out", str(out), "--quiet",
              timeout=900)
    return out


def test_metrics_have_one_entry_per_night(season):
    m = json.loads((season / "metrics.json").read_text())
    assert m["n_nights"] == NIGHTS
    days = [n["date"] for n in m["nights"]]
    assert days == [str(date(2026, 12, 15) + timedelta(k)) for k in range(NIGHTS)]
    assert sum(n["exposures"] for n in m["nights"]) == m["survey"]["exposures"]
    assert sum(n["spectra"] for n in m["nights"]) == m["followup"]["spectra"]
    assert abs(sum(n["reward"] for n in m["nights"]) - m["followup"]["reward"]) < 1e-6
    first, last = m["nights"][0], m["nights"][-1]
    # Night 1: everything is new. By night 3 the sky seen on night 1 is still within
    # three days (new), but far fewer objects are first seen that night.
    assert first["candidates_new"] == first["candidates"] > 0
    assert 0 < last["candidates_new"] < first["candidates_new"] / 2
    assert all(n["classified"] > 0 and n["macro_f1"] is not None for n in m["nights"])


def test_objects_carry_their_season(season):
    with (season / "objects.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0])[-3:] == ["first_mjd", "last_mjd", "n_nights"]
    nights = [int(r["n_nights"]) for r in rows]
    assert max(nights) == NIGHTS and min(nights) >= 1
    for r in rows:
        assert float(r["first_mjd"]) <= float(r["last_mjd"])
        span = float(r["last_mjd"]) - float(r["first_mjd"])
        assert int(r["n_nights"]) <= span + 1.5
    assert sum(1 for r in rows if float(r["last_mjd"]) - float(r["first_mjd"]) > 1.5) > 0
    # Every object of the file is in the store, with all its detections.
    db = sqlite3.connect(season / "store.sqlite")
    stored = dict(db.execute("SELECT object_id, SUM(n) FROM light_curves GROUP BY object_id"))
    for r in rows[:200]:
        assert stored[int(r["object_id"][1:])] == int(r["n_detections"])


def test_the_stream_was_written_night_by_night(season):
    s = Stream.load(season / "stream.npz")
    dates = sorted({d for _t, d, _o in s.ticks})
    assert dates == [str(date(2026, 12, 15) + timedelta(k)) for k in range(NIGHTS)]
    assert s.snapshots and s.snapshots[0].prob.dtype.itemsize == 2  # float16
    with zipfile.ZipFile(season / "stream.npz") as z:
        parts = {n[:5] for n in z.namelist()}
    assert len(parts) == NIGHTS
