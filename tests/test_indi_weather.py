"""The INDI bridge's weather mode against a real ``indiserver`` with
``indi_simulator_weather`` (Debian's ``indi-bin``) on a free loopback port, through a real
BrainLink: the station reported as ``xl.wx`` in SBP1 units and judged with the brain's
own rules; its WEATHER_STATUS Alert (wind over the station's limit, rain) mapped to an
unsafe report; a station that stops updating reported unsafe (stale) and safe again when
it resumes; and the command line's one-line errors (no server, no such station, a field
neither measured nor assumed, a bad --assume).

Without ``indiserver`` these tests fail (install indi-bin); ``SITIAN_SKIP_INDI=1`` skips
them instead, as for tests/test_indi.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import (
    BrainRig,
    free_port,
    reports_safe,
    reports_unsafe,
    require_indi,
    start_server,
    stop_group,
    verdict_of,
)

from drivers.indi import IndiClient, IndiWeather
from drivers.link import DeviceSpec

REPO = Path(__file__).resolve().parent.parent
WX = "xl.wx"
STATION = "Weather Simulator"
STALE_S = 3.0
# What the simulator does not measure (it has wind, gust, rain, temperature)
ASSUME = {"humidity": 0.4, "cloud": 0.1, "seeing_arcsec": 1.5, "dew_margin_c": 5.0}


@pytest.fixture(scope="module")
def indiserver(tmp_path_factory):
    exe = require_indi(("indi_simulator_weather",))
    home = tmp_path_factory.mktemp("indi-weather")  # the driver's ~/.indi goes here
    port = free_port()
    proc = start_server([exe, "-v", "-p", str(port), "-u", str(home / "indiserver.sock"),
                         "indi_simulator_weather"], port, home / "indiserver.log",
                        env={**os.environ, "HOME": str(home)}, cwd=home)
    yield port, home / "indiserver.log"
    stop_group(proc)


@pytest.fixture(scope="module")
def rig(indiserver):
    port, log_path = indiserver
    # The station's operator side: updates every second (its default is 60 s).
    control = IndiClient("127.0.0.1", port, retry_s=0.5)
    control.start(wait_s=10.0)
    control.wait(lambda: (STATION, "CONNECTION") in control.props, 10.0)
    control.new_switch(STATION, "CONNECTION", {"CONNECT": True, "DISCONNECT": False})
    assert control.wait(lambda: (STATION, "WEATHER_UPDATE") in control.props, 10.0)
    control.new_number(STATION, "WEATHER_UPDATE", {"PERIOD": 1})
    assert control.wait(lambda: control.props[(STATION, "WEATHER_UPDATE")].values["PERIOD"]
                        == 1, 10.0)
    client = IndiClient("127.0.0.1", port, retry_s=0.5)
    wx = IndiWeather("xl", client, assume=ASSUME, stale_s=STALE_S, report_s=30.0)
    wx.start(timeout_s=20.0)

    def diagnostics() -> str:
        msgs = "\n".join(f"  {d}: {m}" for d, _, m in list(client.messages)[-8:])
        return (f"weather state: {wx.state(time.time())!r}\nINDI messages:\n{msgs}\n"
                f"indiserver log:\n{log_path.read_text()[-1500:]}")

    r = BrainRig({WX: DeviceSpec("weather", "xl")}, [wx], diagnostics)
    r.wx, r.control = wx, control
    yield r
    r.close()
    client.close()
    control.close()


def _control(rig, **values) -> None:
    """Set the simulator's weather (WEATHER_CONTROL: Wind and Gust km/h, Precip mm)."""
    rig.control.new_number(STATION, "WEATHER_CONTROL", values)


def test_weather_reported_as_site_weather(rig, config):
    assert rig.wx.station == STATION  # found by its DRIVER_INTERFACE weather bit
    k, data = rig.weather(WX, 0, lambda d: True, 10.0, "a weather report")
    assert data["wind_mps"] == 0.0 and data["rain"] is False, data
    assert {f: data[f] for f in ASSUME} == ASSUME, data  # the assumed fields
    assert data["station_safe"] is True and verdict_of(config, data).safe, data
    state = rig.done(WX, "status")
    assert state["state"] == "idle" and state["safe"] is True, state
    assert state["station"] == STATION and state["station_status"] == "Ok", state

    # 40 km/h (11.1 m/s) is over the station's limit (20 km/h: WEATHER_STATUS Alert) and
    # under the brain's (15 m/s): the station's verdict closes the site.
    _control(rig, Wind=40, Gust=40)
    k, data = rig.weather(WX, k, reports_unsafe, 10.0, "an unsafe report")
    assert data["wind_mps"] == pytest.approx(40 / 3.6), data
    assert "WEATHER_STATUS Alert" in data["station_reason"], data
    assert "WEATHER_WIND_SPEED" in data["station_reason"], data
    assert data["rain"] is False and data["humidity"] == ASSUME["humidity"], data
    v = verdict_of(config, data)
    assert not v.safe and v.rule == "station", (v, data)
    _control(rig, Wind=0, Gust=0)
    k, data = rig.weather(WX, k, reports_safe, 10.0, "a safe report again")
    assert verdict_of(config, data).safe and data["humidity"] == ASSUME["humidity"], data

    # Rain: measured (WEATHER_RAIN_HOUR > 0) and the station's Alert both say so.
    _control(rig, Precip=10)
    k, data = rig.weather(WX, k, reports_unsafe, 10.0, "a rain report")
    assert "WEATHER_RAIN_HOUR" in data["station_reason"] and data["rain"] is True, data
    assert not verdict_of(config, data).safe, data
    _control(rig, Precip=0)
    k, data = rig.weather(WX, k, reports_safe, 10.0, "dry again")


def test_station_that_stops_updating_is_unsafe(rig, config):
    k, data = rig.weather(WX, 0, lambda d: True, 10.0, "a weather report")
    k = len(rig.seen)
    rig.control.new_number(STATION, "WEATHER_UPDATE", {"PERIOD": 0})  # no more updates
    t_stop = time.monotonic()
    k, data = rig.weather(WX, k, reports_unsafe, STALE_S + 10.0, "a stale report")
    assert time.monotonic() - t_stop >= STALE_S - 1.2, data  # the last update <= 1 s before
    assert data["station_reason"].startswith("stale"), data
    assert not verdict_of(config, data).safe, data
    state = rig.wx.state(time.time())
    assert state["state"] == "fault" and state["safe"] is False, state
    rig.control.new_number(STATION, "WEATHER_UPDATE", {"PERIOD": 1})
    k, data = rig.weather(WX, k, reports_safe, 10.0, "fresh data again")
    assert verdict_of(config, data).safe, data


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drivers.indi", "--weather", "--site", "xl",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("drivers.indi: error: ") or last.startswith(
        "python -m drivers.indi: error: "), proc.stderr
    return last


def test_command_line_errors(indiserver):
    port = str(indiserver[0])
    assume = [a for f, v in ASSUME.items() for a in ("--assume", f"{f}={v}")]
    nobody = str(free_port())
    last = _one_line_error(_cli("--indi-port", nobody, "--connect-timeout", "1"))
    assert f"no INDI server at 127.0.0.1:{nobody}" in last, last
    last = _one_line_error(_cli("--indi-port", port, "--station", "Nope",
                                "--connect-timeout", "3", *assume))
    assert "lacks weather station 'Nope'" in last and STATION in last, last
    last = _one_line_error(_cli("--indi-port", port, "--connect-timeout", "10"))
    assert "measures no humidity (WEATHER_HUMIDITY)" in last and "--assume" in last, last
    last = _one_line_error(_cli("--indi-port", port, "--assume", "humidity=wet"))
    assert "humidity needs a finite number" in last, last
    proc = _cli("--indi-port", nobody, "--stale-s", "x")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
