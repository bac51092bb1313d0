"""The season report (docs/season.md, "The season report"): a goal reads "met" only
where it was measured against it (a cloudy night at one site used to read "met"
everywhere), and a two-night run's report.html has the per-night tables, the season's
figures and light curves spanning the nights."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from brain.ops.report import goal_rows
from brain.ops.season_report import (
    SEASON_FIGURES,
    measure,
    night_coverage_text,
    site_nights,
)
from brain.ops.survey_metrics import WINDOW_S
from observatory.ephemeris import NightEphemeris
from observatory.records import observations_array
from tests.conftest import REPO, read_metrics, run_brain
from tests.test_nightjobs import png_size

DATE = "2026-12-20"
CLEAR = {"wind_mps": 2.0, "humidity": 0.4, "rain": False, "cloud": 0.1,
         "seeing_arcsec": 1.2, "dew_margin_c": 8.0}


class Series:
    """A site's weather: clear, except raining in [rain_from, rain_to)."""

    def __init__(self, rain_from=np.inf, rain_to=np.inf):
        self.rain_from, self.rain_to = rain_from, rain_to

    def at(self, t):
        raining = self.rain_from <= t < self.rain_to
        return dict(CLEAR, rain=raining, cloud=0.9 if raining else 0.1)


@pytest.fixture(scope="module")
def night(config):
    return NightEphemeris.compute(config, DATE)


def _windows(night, covered):
    lo, hi = night.all_dark_interval()
    n = int((hi - lo) // WINDOW_S)
    return [{"t0": lo + k * WINDOW_S, "covered_deg2": covered, "bound_deg2": covered,
             "visible_deg2": covered, "throughput_deg2": covered} for k in range(n)]


def _metrics(windows):
    cov = [w["covered_deg2"] for w in windows]
    return {"survey": {"coverage_deg2_per_30min": {"median": float(np.median(cov)),
                                                   "windows": len(windows)},
                       "coverage_fraction_of_bound": 1.0, "open_shutter_fraction": 0.9},
            "followup": {"spectra": 4, "hours": 2.0, "reward": 3.0, "reward_per_hour": 1.5,
                         "open_hours": 10.0}}


def _obs(config, night, sites):
    """One hour of open shutter for every camera of ``sites``."""
    rows = []
    for s in config.sites:
        if s.id not in sites:
            continue
        a, _ = night.dark[s.id][0]
        for g in range(s.groups):
            for b in config.camera.bands:
                rows.append((f"{s.id}.g{g}.{b}-0000001", f"{s.id}.g{g}.{b}", s.id, g, b, 1,
                             0.0, 0.0, a, a + 3600.0, 60.0, 1.1, 90.0, -30.0, 21.0))
    return observations_array(rows)


def _verdicts(rows):
    return {what.strip(): verdict for what, _v, _g, verdict in rows}


def test_a_night_clouded_out_at_one_site_is_not_met_everywhere(config, night):
    """Lenghu rains all night; Xinglong and Mengzhou are clear and their coverage is
    above the goal in every window. Before: every goal read "met". Now the coverage
    goal is "not measured" (no window with every site dark and safe) and names Lenghu,
    Lenghu's open-shutter goal is "not measured", the other sites' are measured."""
    goal = config.ops.coverage_goal_deg2
    windows = _windows(night, 1.2 * goal)
    metrics = _metrics(windows)
    weathers = [{"xl": Series(), "lh": Series(0, np.inf), "mz": Series()}]
    obs = _obs(config, night, {"xl", "mz"})
    meas = measure(config, [night], weathers, windows, obs, [])
    rows = goal_rows(config, metrics, meas)
    v = _verdicts(rows)
    cov = next(r for r in rows if r[0].startswith("3-band area"))
    assert cov[3].startswith("not measured"), cov
    left_out = next(r for r in rows if "left out" in r[0])
    assert left_out[1] == f"{len(windows)} of {len(windows)}"
    assert "lh" in left_out[3] and "rain" in left_out[3] and "xl" not in left_out[3]
    lh = next(k for k in v if k.startswith("lh:"))
    assert v[lh].startswith("not measured") and "rain" in v[lh]
    for site in ("xl", "mz"):
        row = next(k for k in v if k.startswith(f"{site}:"))
        assert v[row] in ("met", "below"), (row, v[row])
    # The night's row in the conditions table says the same.
    text = night_coverage_text(config, meas, night.t_begin, night.t_end)
    assert text.startswith("not measured") and "lh" in text
    # Lenghu's conditions: its whole dark time lost, to rain.
    sn = site_nights(config, night, weathers[0])
    assert sn["lh"].lost_h == pytest.approx(sn["lh"].dark_h) and sn["lh"].dark_h > 8
    assert set(sn["lh"].reasons) == {"rain"} and sn["xl"].lost_h == 0
    # Without the weather nothing is checked against it: the coverage goal is not "met".
    plain = goal_rows(config, metrics)
    assert plain[0][3].startswith("not measured")


def test_coverage_is_measured_over_the_clear_windows_only(config, night):
    """Lenghu rains through the first half of the all-dark span: the coverage goal is
    measured over the windows after it (the first half's low coverage does not count),
    and the windows left out are counted and attributed to Lenghu."""
    goal = config.ops.coverage_goal_deg2
    windows = _windows(night, 1.1 * goal)
    half = len(windows) // 2
    for w in windows[:half]:
        w["covered_deg2"] = 0.3 * goal  # Lenghu's fields missing
    stop = windows[half]["t0"]
    weathers = [{"xl": Series(), "lh": Series(0, stop), "mz": Series()}]
    meas = measure(config, [night], weathers, windows, _obs(config, night, {"xl", "mz"}), [])
    rows = goal_rows(config, _metrics(windows), meas)
    cov = next(r for r in rows if r[0].startswith("3-band area"))
    assert cov[3] == "met" and cov[1] == f"{1.1 * goal:,.0f} deg²"
    left_out = next(r for r in rows if "left out" in r[0])
    assert left_out[1] == f"{half} of {len(windows)}" and left_out[3].startswith("lh:")
    text = night_coverage_text(config, meas, night.t_begin, night.t_end)
    assert text.startswith("met") and f"over {len(windows) - half} of {len(windows)}" in text
    # Every site clear: every window counts.
    clear = measure(config, [night], [{s.id: Series() for s in config.sites}], windows,
                    _obs(config, night, {"xl", "lh", "mz"}), [])
    cov = goal_rows(config, _metrics(windows), clear)
    assert not any("left out" in r[0] for r in cov)
    everything = np.median([w["covered_deg2"] for w in windows])  # the rainy half too
    assert cov[0][1] == f"{everything:,.0f} deg²"


@pytest.fixture(scope="module")
def season_run(tmp_path_factory):
    """Two nights of Xinglong and Lenghu (two groups and one), a sparse sky."""
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "season-report-test"
    d["sites"] = [dict(d["sites"][0], groups=2), dict(d["sites"][1], groups=1)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("sky", {})["density_scale"] = 0.05
    root = tmp_path_factory.mktemp("season")
    (root / "small.yaml").write_text(yaml.safe_dump(d))
    out = root / "run"
    r = run_brain("simulate", "--config", str(root / "small.yaml"), "--nights", "2",
                  "--seed", "6", "--start", DATE, "--out", str(out), "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_two_night_report_tells_the_season(season_run):
    html = (season_run / "report.html").read_text()
    m = read_metrics(season_run)
    dates = [n["date"] for n in m["nights"]]
    assert dates == ["2026-12-20", "2026-12-21"]
    assert "SiTian season report" in html and "The season: 2 nights" in html
    # The per-night table and the conditions table name both nights.
    for d in dates:
        assert html.count(f"<td>{d}</td>") == 2, d
    assert "Each night&#x27;s conditions" in html or "Each night's conditions" in html
    assert re.search(r"xl: dark \d+\.\d h, lost \d+\.\d h", html)
    assert re.search(r"lh: dark \d+\.\d h", html)
    assert re.search(r"\d+% wax|\d+% wan", html)  # the moon
    assert re.search(r"g \d\d\.\d\d r \d\d\.\d\d i \d\d\.\d\d", html)  # the depth
    assert "greedy" in html or m["policy"] in html
    # The season's figures: real PNGs of a readable size, each on the page.
    min_size = {"season_followup.png": (700, 250), "season_candidates.png": (700, 250),
                "season_depth.png": (700, 700)}
    for name in SEASON_FIGURES:
        w, h = png_size(season_run / name)
        assert w >= min_size[name][0] and h >= min_size[name][1], (name, w, h)
        assert (season_run / name).stat().st_size > 10_000, name
        assert f'src="{name}"' in html
    # The goals: verdicts measured or said not to be.
    goals = html[html.index("Against the goals"):html.index("in numbers")]
    assert "windows with every site dark and safe" in goals
    assert "light_curves.png" in html
