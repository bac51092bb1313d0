"""The ASCOM Alpaca bridge against the real ``alpaca-simulators`` server (PyPI
``alpaca-simulators``, the ``dev`` extra) on a free loopback port, driven through a real
BrainLink: open, slew (an ICRS target sent to the mount in its EquatorialSystem, JNow
here, and reported back in ICRS), expose, a request the camera refuses, close, park;
the weather station (ObservingConditions + SafetyMonitor) as ``xl.wx``, judged with the
brain's own rules: safe, the SafetyMonitor's unsafe, the brain's wind limit, and a
station that stops answering (stale: unsafe); and the command line's one-line errors.

The simulator's camera draws its stars from a Gaia catalogue: the test gives it a small
seeded SQLite catalogue (``tap_source``), so nothing is fetched from the internet.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from alpaca.camera import Camera
from alpaca.dome import Dome
from alpaca.telescope import Telescope
from alpaca_rig import sky_catalogue, start_simulator
from loopback import (
    BrainRig,
    free_port,
    reports_safe,
    reports_unsafe,
    sep_deg,
    stop_group,
    verdict_of,
)

from drivers.alpaca import AlpacaClient, AlpacaTelescope, AlpacaWeather
from drivers.coords import SYSTEMS, icrs_to_eod, icrs_to_mount, mount_to_icrs
from drivers.link import DeviceSpec
from drivers.sky import lst_deg

REPO = Path(__file__).resolve().parent.parent
DEVICE, WX = "xl.g01.g", "xl.wx"
SITE_LAT, SITE_LON, SITE_ELEV = 40.3933, 117.575, 900.0  # Xinglong
STALE_S = 3.0
SEED = 20260615


def eod_back(radec: tuple[float, float], t: float) -> tuple[float, float]:
    """A JNow position (degrees) at ``t`` in ICRS."""
    return mount_to_icrs(radec[0], radec[1], t, "jnow")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """alpaca-simulators on a free port with the package's device template, changed to:
    a JNow mount, a small camera with a 0.01 s minimum, a local star catalogue
    (tests/alpaca_rig.py)."""
    home = tmp_path_factory.mktemp("alpaca")
    sky_catalogue(home / "stars.db", SEED)
    sim = start_simulator(home, home / "stars.db", equatorial_system=1,  # equTopocentric
                          camera=dict(cameraxsize=64, cameraysize=64, numx=64, numy=64,
                                      exposuremin=0.01))
    yield sim.port, sim.url, sim.proc, sim.log
    stop_group(sim.proc)


@pytest.fixture(scope="module")
def rig(server):
    port, _url, _proc, log_path = server
    tel_client = AlpacaClient("127.0.0.1", port, poll_s=0.25)
    tel = AlpacaTelescope(DEVICE, "xl", 1, "g", tel_client, lat_deg=SITE_LAT,
                          lon_deg=SITE_LON, elev_m=SITE_ELEV)
    tel.start(timeout_s=20.0)
    wx_client = AlpacaClient("127.0.0.1", port, poll_s=0.25)
    wx = AlpacaWeather("xl", wx_client, stale_s=STALE_S, report_s=30.0)
    wx.start(timeout_s=20.0)

    def diagnostics() -> str:
        return (f"telescope state: {tel.state(time.time())!r}\n"
                f"weather state: {wx.state(time.time())!r}\n"
                f"server log ({log_path}):\n{log_path.read_text()[-1500:]}")

    r = BrainRig({DEVICE: DeviceSpec("telescope", "xl", 1, "g"), WX: DeviceSpec("weather", "xl")},
                 [tel, wx], diagnostics)
    r.tel, r.wx = tel, wx
    yield r
    r.close()
    tel_client.close()
    wx_client.close()


def test_open_slew_expose_close_park(server, rig):
    port = server[0]
    address = f"127.0.0.1:{port}"
    mount, dome, camera = Telescope(address, 0), Dome(address, 0), Camera(address, 0)
    assert rig.tel.system == "jnow"  # from the mount's EquatorialSystem
    assert mount.SiteLatitude == pytest.approx(SITE_LAT)
    assert mount.SiteLongitude == pytest.approx(SITE_LON)

    assert rig.done(DEVICE, "open") == {}
    assert dome.ShutterStatus == 0 and mount.AtPark is False  # open, unparked

    # An hour east of the meridian at Dec +40: about 78 degrees high at Xinglong, and
    # 10 arcminutes or more between ICRS and the epoch of date (2026).
    t0 = time.time()
    ra, dec = (lst_deg(t0, SITE_LON) + 15.0) % 360.0, 40.0
    res = rig.done(DEVICE, "slew", {"ra_deg": ra, "dec_deg": dec})
    t1 = time.time()
    assert set(res) >= {"ra_deg", "dec_deg", "alt_deg", "az_deg"}, res
    # What the mount was sent is the target in its JNow, not the ICRS numbers.
    sent = (mount.TargetRightAscension * 15.0, mount.TargetDeclination)
    assert sep_deg(*sent, ra, dec) * 60.0 > 5.0, (sent, ra, dec)
    assert sep_deg(*sent, *icrs_to_eod(ra, dec, t0)) * 3600.0 < 0.5, (sent, t0)
    # Where it went, converted back, is the target; so is what the bridge reports.
    here = (mount.RightAscension * 15.0, mount.Declination)
    assert sep_deg(*eod_back(here, t1), ra, dec) * 3600.0 < 5.0, (here, ra, dec)
    assert sep_deg(res["ra_deg"], res["dec_deg"], ra, dec) * 3600.0 < 5.0, (res, ra, dec)
    assert 70.0 < res["alt_deg"] < 85.0 and 0.0 < res["az_deg"] < 180.0, res  # high, east
    assert mount.Tracking is True

    t_sent = time.time()
    res2 = rig.done(DEVICE, "expose", {"seconds": 1.0, "obs_id": "alp-1", "field_id": 7})
    t_back = time.time()
    assert res2["obs_id"] == "alp-1" and res2["field_id"] == 7, res2
    assert res2["t_end"] - res2["t_start"] == pytest.approx(1.0), res2
    assert t_sent - 0.5 <= res2["t_start"] <= t_back - 1.0, (res2, t_sent, t_back)
    assert camera.ImageReady is True and camera.LastExposureDuration == pytest.approx(1.0)
    alt = res["alt_deg"]
    assert res2["airmass"] == pytest.approx(1 / math.sin(math.radians(alt)), rel=0.02), res2
    assert res2["limiting_mag"] == pytest.approx(
        20.5 + 1.25 * math.log10(1 / 60) - 0.2 * (res2["airmass"] - 1), abs=0.01), res2
    # The camera refuses a too-short exposure: device_fault, with the driver's reason.
    ev = rig.failed(DEVICE, "expose", {"seconds": 0.001, "obs_id": "alp-2", "field_id": 7})
    assert ev.code == "device_fault" and "too short" in ev.message, ev

    assert rig.done(DEVICE, "close") == {}
    assert dome.ShutterStatus == 1  # closed
    assert rig.done(DEVICE, "status")["state"] == "closed"
    rig.wait(lambda: rig.link.peers[DEVICE].state.get("state") == "closed", 10.0,
             "a heartbeat with state closed")
    ev = rig.failed(DEVICE, "slew", {"ra_deg": ra, "dec_deg": dec})
    assert ev.code == "device_fault" and "closed" in ev.message, ev
    ev = rig.failed(DEVICE, "expose", {"seconds": 1.0, "obs_id": "alp-3", "field_id": 7})
    assert ev.code == "device_fault" and "closed" in ev.message, ev
    assert rig.done(DEVICE, "park") == {}
    assert mount.AtPark is True
    assert rig.done(DEVICE, "status")["parked"] is True
    assert rig.done(DEVICE, "park") == {}  # idempotent


def test_refusals(rig):
    ev = rig.failed(DEVICE, "spectrum", {"target_id": "x", "ra_deg": 1.0, "dec_deg": 2.0,
                                         "seconds": 10.0})
    assert ev.code == "unknown_command", ev
    ev = rig.failed(DEVICE, "slew", {"ra_deg": 360.0, "dec_deg": 10.0})
    assert ev.code == "bad_args", ev
    ev = rig.failed(WX, "open")
    assert ev.code == "unknown_command", ev


def test_weather_station_as_site_weather(server, rig, config):
    _port, url, proc, _log = server
    # The first report: the simulator's ObservingConditions, in SBP1 units; safe.
    k, data = rig.weather(WX, 0, lambda d: True, 10.0, "a weather report")
    assert data["wind_mps"] == pytest.approx(3.0) and data["humidity"] == pytest.approx(0.6)
    assert data["rain"] is False and data["seeing_arcsec"] == pytest.approx(2.5)
    assert data["dew_margin_c"] == pytest.approx(10.0)  # temperature 15, dew point 5
    assert data["cloud"] == pytest.approx(0.002)  # CloudCover is a percentage (0.2 %)
    assert data["station_safe"] is True and verdict_of(config, data).safe, data
    assert rig.done(WX, "status")["sensor_age_s"] == 1.0  # TimeSinceLastUpdate("")

    def put(path: str, **form) -> None:
        r = requests.put(f"{url}/{path}", data=form, timeout=5)
        assert r.ok and r.json()["ErrorNumber"] == 0, r.text

    # The SafetyMonitor says unsafe: a report the brain closes on, saying why.
    put("safetymonitor/0/issafe", IsSafe="false")
    k, data = rig.weather(WX, k, reports_unsafe, 10.0, "an unsafe report")
    assert "IsSafe" in data["station_reason"] and data["rain"] is False, data
    v = verdict_of(config, data)
    assert not v.safe and v.rule == "station", (v, data)
    assert rig.done(WX, "status")["safe"] is False
    put("safetymonitor/0/issafe", IsSafe="true")
    k, data = rig.weather(WX, k, reports_safe, 10.0, "a safe report again")
    assert verdict_of(config, data).safe, data

    # A wind the station calls safe but the brain's limit (15 m/s) does not.
    put("observingconditions/0/windspeed", WindSpeed="20")
    k, data = rig.weather(WX, k, lambda d: d["wind_mps"] == 20.0, 10.0, "wind 20 m/s")
    assert data["station_safe"] is True and verdict_of(config, data).rule == "wind", data
    put("observingconditions/0/windspeed", WindSpeed="3")
    k, data = rig.weather(WX, k, lambda d: d["wind_mps"] == 3.0, 10.0, "wind 3 m/s")

    # The station stops answering (the server frozen): stale after STALE_S, unsafe.
    t_freeze = time.monotonic()
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        k, data = rig.weather(WX, k, reports_unsafe, STALE_S + 10.0,
                              "a stale report")
        # (the simulator's TimeSinceLastUpdate says its sensors are always 1 s old)
        assert time.monotonic() - t_freeze >= STALE_S - 1.0 - 0.3, data
        assert data["station_reason"].startswith("stale"), data
        assert not verdict_of(config, data).safe, data
        state = rig.wx.state(time.time())
        assert state["state"] == "fault" and state["safe"] is False, state
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    k, data = rig.weather(WX, k, reports_safe, 20.0, "fresh data again")
    assert verdict_of(config, data).safe, data
    rig.wait(lambda: rig.tel.state(time.time())["state"] != "fault", 20.0,
             "the telescope to answer again")


def _cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drivers.alpaca", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def _one_line_error(proc: subprocess.CompletedProcess, starts: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(starts), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return last


def test_command_line_errors(server):
    port = server[0]
    tel = ["--device-id", DEVICE, "--site", "xl", "--group", "1", "--band", "g",
           "--connect-timeout", "1"]
    nobody = free_port()  # nothing listens there
    last = _one_line_error(_cli("--alpaca-port", str(nobody), *tel),
                           "drivers.alpaca: error: no Alpaca server at 127.0.0.1:")
    assert str(nobody) in last
    last = _one_line_error(_cli("--alpaca-port", str(port), "--telescope", "5", *tel),
                           "drivers.alpaca: error: Alpaca server")
    assert "has no telescope 5" in last, last
    last = _one_line_error(_cli("--alpaca-port", str(port), "--weather", "--site", "xl",
                                "--conditions", "none", "--connect-timeout", "5"),
                           "drivers.alpaca: error:")
    assert "measures no wind_mps" in last and "--assume" in last, last
    for bad in (["--site", "xl"], ["--weather", "--site", "xl", "--assume", "fog=1"],
                ["--weather", "--site", "xl", "--conditions", "x"]):
        proc = _cli("--alpaca-port", str(nobody), *bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_equatorial_systems_round_trip():
    t = 1.8e9  # 2027-01-15
    for system in SYSTEMS:
        for ra, dec in ((0.0, 0.0), (83.633, 22.0145), (201.298, -43.019), (359.999, 89.5)):
            m = icrs_to_mount(ra, dec, t, system)
            assert 0.0 <= m[0] < 360.0 and -90.0 <= m[1] <= 90.0, (system, m)
            back = mount_to_icrs(*m, t, system)
            assert sep_deg(*back, ra, dec) * 3600.0 < 0.01, (system, ra, dec, m, back)
    assert icrs_to_mount(83.633, 22.0145, t, "j2000") == (83.633, 22.0145)
    # J2050 is 50 years of precession (about 0.7 degrees on the equator) from J2000;
    # B1950 as far the other way.
    for system in ("j2050", "b1950"):
        sep = sep_deg(*icrs_to_mount(0.0, 0.0, t, system), 0.0, 0.0)
        assert 0.6 < sep < 0.75, (system, sep)
