"""Weather safety: the brain closes a site while its weather is unsafe and reopens it
when the weather clears; ``weather_verdict`` treats missing, stale or NaN data as
unsafe and names the rule that decided.

The night tests read the climate night's recorded weather (environment.npz: values held
on a 60 s grid) and judge it against the config limits with code written here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from conftest import CLIMATE_ARGS, REPO, read_environment, read_observations

from brain.config import config_from_dict
from brain.core.braincore import BrainCore
from brain.core.events import Command, Weather
from brain.core.safety import weather_verdict
from drivers import protocol as P
from drivers.clock import parse_start
from drivers.protocol import weather_values

STEP_S = 60.0
REOPEN_WITHIN_S = 600.0
MIN_CLEAR_STRETCH_S = 1200.0


# The climate night ------------------------------------------------------------------
@pytest.fixture(scope="module")
def night_record(climate_run, config):
    """Per site: sample times, unsafe flag per held sample, dark flag; and the log."""
    from observatory.ephemeris import NightEphemeris

    date = CLIMATE_ARGS[CLIMATE_ARGS.index("--start") + 1]
    night = NightEphemeris.compute(config, date)
    env = read_environment(climate_run)
    lim = config.limits
    sites = {}
    for s in config.sites:
        t = env[f"w0_{s.id}_t_unix"]
        assert np.all(np.diff(t) == STEP_S), "weather is not on a 60 s grid"
        wind, hum = env[f"w0_{s.id}_wind_mps"], env[f"w0_{s.id}_humidity"]
        rain = env[f"w0_{s.id}_rain"].astype(bool)
        unsafe = ~(wind <= lim.max_wind_mps) | ~(hum <= lim.max_humidity)
        if not lim.rain_ok:
            unsafe |= rain
        dark = night.sites[s.id].sun_alt(t) <= lim.max_sun_alt_deg
        sites[s.id] = {"t": t, "unsafe": unsafe, "dark": dark}
    return sites, read_observations(climate_run)


@pytest.mark.slow
def test_climate_night_has_unsafe_weather_while_dark(night_record):
    """The night chosen for the safety tests really has unsafe spells in the dark, and a
    spell that clears while it is still dark (otherwise these tests prove nothing)."""
    sites, _obs = night_record
    unsafe_dark = {k: int(np.sum(v["unsafe"] & v["dark"])) for k, v in sites.items()}
    assert sum(unsafe_dark.values()) >= 30, unsafe_dark
    assert len(_clearings(sites)) >= 1


@pytest.mark.slow
def test_no_exposure_while_weather_unsafe(night_record):
    """No exposure starts or runs while its site's weather is unsafe, except during the
    first weather step of an unsafe spell (one step of reaction time)."""
    sites, obs = night_record
    checked = 0
    for site, rec in sites.items():
        t, unsafe = rec["t"], rec["unsafe"]
        # The first held sample of each spell is forgiven (reaction time).
        forbidden = unsafe & np.concatenate([[False], unsafe[:-1]])
        before = np.concatenate([[0], np.cumsum(forbidden)])  # forbidden samples before k
        rows = obs[obs["site"] == site]
        k_lo = np.searchsorted(t, rows["t_start"], side="right") - 1
        k_hi = np.searchsorted(t, rows["t_end"], side="left") - 1  # last sample < t_end
        assert (k_lo >= 0).all() and (k_hi < len(t)).all(), "exposure outside the record"
        bad = before[k_hi + 1] - before[k_lo] > 0
        assert not bad.any(), (
            f"{site}: {int(bad.sum())} exposures during unsafe weather, first "
            f"{rows['obs_id'][bad][0]} at {rows['t_start'][bad][0]:.0f}")
        checked += int(forbidden.sum())
    assert checked > 0


def _clearings(sites):
    """(site, t) where an unsafe spell ends while dark, followed by at least
    MIN_CLEAR_STRETCH_S of dark, safe weather."""
    out = []
    n_need = int(MIN_CLEAR_STRETCH_S // STEP_S)
    for site, rec in sites.items():
        ok = ~rec["unsafe"] & rec["dark"]
        for k in np.flatnonzero(rec["unsafe"][:-1] & ~rec["unsafe"][1:]) + 1:
            if k + n_need <= len(ok) and ok[k:k + n_need].all():
                out.append((site, float(rec["t"][k])))
    return out


@pytest.mark.slow
def test_site_reopens_after_weather_clears(night_record, config):
    """When a site's weather clears in the dark, every one of its groups observes again
    within 10 minutes."""
    sites, obs = night_record
    clearings = _clearings(sites)
    assert clearings, "no clearing in the dark on this night"
    for site, t_clear in clearings:
        n_groups = config.site(site).groups
        after = obs[(obs["site"] == site) & (obs["t_start"] >= t_clear)
                    & (obs["t_start"] <= t_clear + REOPEN_WITHIN_S)]
        groups = set(after["group"].tolist())
        assert groups == set(range(1, n_groups + 1)), (
            f"{site}: after clearing at {t_clear:.0f} only groups {sorted(groups)} observed")


# weather_verdict ----------------------------------------------------------------------
T = 1_797_000_000.0


def _wx(age_s=0.0, **kw):
    values = {"wind_mps": 3.0, "humidity": 0.4, "rain": False, "cloud": 0.0,
              "seeing_arcsec": 1.0, "dew_margin_c": 10.0}
    values.update(kw)
    return Weather(T - age_s, "xl", **values)


def test_good_weather_is_safe(config):
    """Fresh, calm, dry weather is safe (rule 'ok')."""
    v = weather_verdict(config.limits, _wx(), T)
    assert (v.safe, v.rule) == (True, "ok")


def test_missing_weather_is_unsafe(config):
    """With no weather report at all the site is unsafe."""
    v = weather_verdict(config.limits, None, T)
    assert (v.safe, v.rule) == (False, "weather_missing")
    assert v.detail


@pytest.mark.parametrize(("age_s", "safe"), [(0.0, True), (120.0, True), (120.5, False),
                                             (3600.0, False)])
def test_stale_weather_is_unsafe(config, age_s, safe):
    """A report older than 120 s is stale and unsafe, however good it was."""
    v = weather_verdict(config.limits, _wx(age_s=age_s), T)
    assert v.safe is safe
    assert v.rule == ("ok" if safe else "weather_stale")


@pytest.mark.parametrize(("values", "rule"), [
    ({"wind_mps": math.nan}, "weather_invalid"),
    ({"wind_mps": 15.01}, "wind"),
    ({"wind_mps": 40.0}, "wind"),
    ({"humidity": math.nan}, "weather_invalid"),
    ({"humidity": 0.86}, "humidity"),
    ({"rain": True}, "rain"),
])
def test_each_unsafe_condition_names_its_rule(config, values, rule):
    """Wind above 15 m/s, humidity above 0.85, rain, and NaN readings (missing data)
    are unsafe, and the verdict names the rule with a human-readable detail."""
    v = weather_verdict(config.limits, _wx(**values), T)
    assert (v.safe, v.rule) == (False, rule)
    assert v.detail


@pytest.mark.parametrize("values", [{"wind_mps": 15.0}, {"humidity": 0.85}])
def test_limits_themselves_are_safe(config, values):
    """The limits are inclusive: exactly 15 m/s or exactly 0.85 humidity is safe."""
    assert weather_verdict(config.limits, _wx(**values), T).safe


def test_rain_allowed_when_configured(config):
    """With ``rain_ok: true`` rain alone does not close the site."""
    limits = config.limits.model_copy(update={"rain_ok": True})
    assert weather_verdict(limits, _wx(rain=True), T).safe


@pytest.mark.parametrize(("values", "field"), [
    ({"wind_mps": -100.0}, "wind_mps"), ({"wind_mps": 500.0}, "wind_mps"),
    ({"humidity": -3.0}, "humidity"), ({"humidity": 1.2}, "humidity"),
    ({"cloud": 7.0}, "cloud"), ({"cloud": -0.1}, "cloud"),
    ({"seeing_arcsec": -1.0}, "seeing_arcsec"), ({"seeing_arcsec": 0.0}, "seeing_arcsec"),
    ({"seeing_arcsec": math.inf}, "seeing_arcsec"), ({"dew_margin_c": -40.0}, "dew_margin_c"),
    ({"humidity": -3.0, "cloud": 7.0}, "humidity"),
])
def test_physically_impossible_values_are_missing_data(config, values, field):
    """A value outside its physical range (negative wind, humidity or cloud beyond
    [0, 1], seeing <= 0...) is a broken sensor: unsafe, and the verdict names the field,
    although no limit on wind or humidity is exceeded."""
    v = weather_verdict(config.limits, _wx(**values), T)
    assert (v.safe, v.rule) == (False, "weather_invalid")
    assert v.detail.startswith(f"{field} "), v.detail


@pytest.mark.parametrize("values", [{"wind_mps": 0.0}, {"humidity": 0.0}, {"cloud": 1.0},
                                    {"seeing_arcsec": 0.2}, {"dew_margin_c": 0.0}])
def test_the_ends_of_the_physical_ranges_are_valid(config, values):
    assert weather_verdict(config.limits, _wx(**values), T).safe


@pytest.fixture(scope="module")
def xl_config():
    """Xinglong alone, one group, a sparse sky: a core that starts in seconds."""
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "safety-xl"
    d["sites"] = [dict(d["sites"][0], groups=1)]
    d["spectrographs"] = []
    d.setdefault("sky", {})["density_scale"] = 0.05
    return config_from_dict(d)


def test_an_impossible_weather_report_closes_an_open_site_and_is_counted(xl_config):
    """Through the core: an open site whose station reports wind -100 m/s, humidity -3,
    cloud 7 and seeing -1 closes at once; each bad field is counted; the nonsense never
    reaches the depth model; nothing may open until a valid report comes."""
    core = BrainCore(xl_config)
    t = parse_start("2026-12-15T14:00:00")  # Xinglong is dark
    cmds = core.handle(Weather(t, "xl", 2.0, 0.3, False, 0.1, 1.2, 5.0))
    assert core.sites["xl"].open and {c.name for c in cmds} == {"open"}
    depth = dict(core.scheduler.depth.conditions)
    cmds = core.handle(Weather(t + 10, "xl", -100.0, -3.0, False, 7.0, -1.0, 5.0))
    site = core.sites["xl"]
    assert (site.verdict.safe, site.verdict.rule) == (False, "weather_invalid")
    assert site.verdict.detail.startswith("wind_mps -100 ")
    assert not site.open and {c.name for c in cmds} == {"close", "park"}
    assert dict(core.weather_rejected) == {("xl", f): 1 for f in
                                           ("wind_mps", "humidity", "cloud", "seeing_arcsec")}
    assert core.scheduler.depth.conditions == depth
    assert core.guard(Command("xl.g01.g", "open"), t + 11) == "weather_invalid"
    assert core.plan_state(t + 11).sites["xl"]["rule"] == "weather_invalid"
    cmds = core.handle(Weather(t + 20, "xl", 2.0, 0.3, False, 0.1, 1.2, 5.0))
    assert site.open and {c.name for c in cmds} == {"open"}
    assert sum(core.weather_rejected.values()) == 4  # a valid report counts nothing


def test_the_station_saying_unsafe_closes_whatever_the_limits(xl_config):
    """A station's own verdict (``station_safe: false``, docs/protocol.md) closes an open
    site although every value is within the limits, names the rule ``station`` with the
    station's reason, and comes off when the station says safe again; rain that never
    fell is not needed for it (``rain_ok: true`` does not open the site)."""
    limits = xl_config.limits.model_copy(update={"rain_ok": True})
    v = weather_verdict(limits, _wx(station_safe=False, station_reason="lightning 8 km"), T)
    assert (v.safe, v.rule) == (False, "station") and "lightning 8 km" in v.detail
    core = BrainCore(xl_config)
    t = parse_start("2026-12-15T14:00:00")
    assert {c.name for c in core.handle(Weather(t, "xl", 2.0, 0.3, False, 0.1, 1.2, 5.0))
            } == {"open"}
    cmds = core.handle(Weather(t + 10, "xl", 2.0, 0.3, False, 0.1, 1.2, 5.0,
                               station_safe=False, station_reason="IsSafe is False"))
    assert not core.sites["xl"].open and {c.name for c in cmds} == {"close", "park"}
    assert core.guard(Command("xl.g01.g", "open"), t + 11) == "station"
    cmds = core.handle(Weather(t + 20, "xl", 2.0, 0.3, False, 0.1, 1.2, 5.0))
    assert core.sites["xl"].open and {c.name for c in cmds} == {"open"}


@pytest.mark.parametrize(("extra", "ok"), [
    ({}, True), ({"station_safe": True}, True),
    ({"station_safe": False, "station_reason": "stale"}, True),
    ({"station_safe": "false"}, False), ({"station_safe": 0}, False),
    ({"station_safe": False, "station_reason": 3}, False),
])
def test_the_station_verdict_on_the_wire(extra, ok):
    """``station_safe`` must be a bool and ``station_reason`` a str, or the report is a
    bad message (and ignored: the old one ages into weather_stale)."""
    data = {"wind_mps": 2.0, "humidity": 0.3, "rain": False, "cloud": 0.1,
            "seeing_arcsec": 1.2, "dew_margin_c": 5.0, **extra}
    frames = P.encode("EVENT", {"name": "weather", "data": data}, 1.0)
    if ok:
        msg = P.decode(frames, P.FROM_DEVICE)
        assert weather_values(msg.body["data"])["station_safe"] is extra.get(
            "station_safe", True)
    else:
        with pytest.raises(P.ProtocolError, match="station_"):
            P.decode(frames, P.FROM_DEVICE)
