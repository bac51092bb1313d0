"""The daemon shell against ``brain sim-drivers`` over real sockets, on a simulated clock:
a rehearsal that is killed with SIGKILL mid-night and restarted from its journal; no
observation may be lost and no command executed twice. Also the safety gate and the
command line's one-line refusals."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from brain.shells.journal import Journal
from drivers.device import Device, DeviceHost
from tests.conftest import REPO, brain_cmd, run_brain, stop_procs
from tests.conftest import wait_for as _wait_for

START = "2026-12-15T11:00:00"  # Xinglong is dark from about 10:50 UTC
SPEED = "60"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    """Xinglong alone, two groups, a sparse sky: quick to start, same code paths."""
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["name"] = "rehearsal-xl"
    d["sites"] = [dict(d["sites"][0], groups=2)]
    d["spectrographs"] = [d["spectrographs"][0]]
    d.setdefault("sky", {})["density_scale"] = 0.05
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def query(db: Path, sql: str):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def wait_for(pred, timeout_s: float, what: str, procs=()):
    """tests.conftest.wait_for; the journal not created yet is not yet."""
    _wait_for(pred, timeout_s, what, procs, not_yet=(sqlite3.OperationalError,))


def test_killed_daemon_restarts_from_its_journal_without_loss_or_repeats(small_config,
                                                                          tmp_path):
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    journal, log = tmp_path / "journal.sqlite", tmp_path / "drivers.jsonl"
    link = ["--config", str(small_config), "--start", START, "--speed", SPEED,
            "--router", router, "--pub", pub]
    daemon_cmd = brain_cmd("run", *link, "--journal", str(journal), "--metrics-port", "0",
                           "--policy", "greedy", "--failsafe-s", "120", "--hosting", "local")
    out = (tmp_path / "daemon.log").open("w")
    drivers = subprocess.Popen(brain_cmd("sim-drivers", *link, "--weather", "clear",
                                         "--log", str(log)),
                               cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    daemon = subprocess.Popen(daemon_cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        n_obs = lambda: query(journal, "SELECT COUNT(*) FROM observations")[0][0]  # noqa: E731
        wait_for(lambda: n_obs() >= 30, 120, "30 observations", [drivers, daemon])
        daemon.send_signal(signal.SIGKILL)  # mid-night, exposures in flight
        daemon.wait(10)
        first = n_obs()
        in_flight = query(journal, "SELECT COUNT(*) FROM commands WHERE status='sent'")[0][0]
        assert in_flight > 0  # killed while commands were on the wire
        daemon = subprocess.Popen(daemon_cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: n_obs() >= first + 30, 120, "30 more observations after restart",
                 [drivers, daemon])
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
    finally:
        stop_procs((daemon, drivers))
        out.close()
    executed = [json.loads(line) for line in log.read_text().splitlines()]
    # Nothing executed twice: command ids never repeat, nor do exposure ids.
    ids = [e["cmd_id"] for e in executed]
    assert len(ids) == len(set(ids))
    obs_ids = [e["args"]["obs_id"] for e in executed if e["name"] == "expose"]
    assert len(obs_ids) == len(set(obs_ids))
    # Two sessions; the first one's in-flight commands were recovered, none left 'sent'
    # from it, and none of its non-idempotent commands was sent again by the second.
    sessions = [r[0] for r in query(journal, "SELECT session FROM sessions ORDER BY rowid")]
    assert len(sessions) == 2
    # The first session's loop began at --start (within 3 wall seconds): the setup runs
    # before the rehearsal's clock is set, not on it. (This sparse sky sets up in about
    # a second either way; on the default array the night jobs' ephemerides took 7 s
    # after the clock was set, the first 12 world minutes at 100x, before they moved.)
    began = query(journal, "SELECT started_world FROM sessions ORDER BY rowid")[0][0]
    start_t = datetime.fromisoformat(START).replace(tzinfo=UTC).timestamp()
    assert 0 <= began - start_t < 3 * float(SPEED)
    left = query(journal, f"SELECT COUNT(*) FROM commands WHERE session='{sessions[0]}' "
                          "AND status='sent'")[0][0]
    assert left == 0
    statuses = dict(query(journal, f"SELECT status, COUNT(*) FROM commands WHERE "
                                   f"session='{sessions[0]}' GROUP BY status"))
    assert statuses.get("done", 0) > 30
    # No observation lost: every exposure a telescope executed is in the journal's
    # observations, unless it was still in flight when the daemon was finally stopped.
    journalled = {r[0] for r in query(journal, "SELECT obs_id FROM observations")}
    in_flight_at_end = {json.loads(r[0])["obs_id"] for r in query(
        journal, f"SELECT args FROM commands WHERE name='expose' AND status='sent' "
                 f"AND session='{sessions[1]}'")}
    missing = set(obs_ids) - journalled - in_flight_at_end
    assert not missing, f"exposures executed but not journalled: {sorted(missing)[:5]}"
    # The night went on where it stopped: the second session observed too, and its
    # exposure ids continue the sequence instead of reusing the first session's.
    second = query(journal, f"SELECT COUNT(*) FROM commands WHERE name='expose' AND "
                            f"session='{sessions[1]}' AND status='done'")[0][0]
    assert second >= 20
    # ... and at the world time where it stopped, not back at --start.
    last_first = query(journal, f"SELECT MAX(t_sent) FROM commands "
                                f"WHERE session='{sessions[0]}'")[0][0]
    first_second = query(journal, f"SELECT MIN(t_sent) FROM commands "
                                  f"WHERE session='{sessions[1]}'")[0][0]
    assert first_second >= last_first


def _journal_with_a_spectrum(config, path, t0: float, number: int, objects=()):
    """A journal: three detections of each of ``objects`` (ra, dec) and a spectrum at
    (150, 30), target number ``number``, done 700 s after it was sent. Returns it open,
    and the spectrograph's device id."""
    import numpy as np

    from brain.core.events import Command
    from brain.shells.journal import Journal
    from observatory.times import unix_to_mjd

    j = Journal(path)
    j.start_session("old-session", t0)
    for k in range(3):
        for ra, dec in objects:
            j.detections(f"x-{k}-{ra}", 0, t0 + 60 * k, {
                "ra_deg": np.array([ra]), "dec_deg": np.array([dec]),
                "mag": np.array([19.0]), "mag_err": np.array([0.05]),
                "mjd": np.array([float(unix_to_mjd(t0 + 60 * k))]),
                "band": np.array([1])})
    spec = f"{config.spectrographs[0].site}.spec"
    done = Command(spec, "spectrum", {"ra_deg": 150.0, "dec_deg": 30.0, "seconds": 600.0,
                                      "target_id": f"{spec}-{number:06d}"}, deadline=t0 + 2000)
    j.command("old-session", done, t0 + 200)
    j.finish(done.cmd_id, "done", t0 + 900, {"label": "SNIa", "t_start": t0 + 210,
                                             "t_end": t0 + 900})
    return j, spec


def _restart_with_followup(config, path, t: float):
    from brain.shells.daemon import Daemon
    from drivers.clock import WorldClock
    from policies.followup import make_policy

    return Daemon(config, path, WorldClock(t, 60.0), router=f"tcp://127.0.0.1:{free_port()}",
                  pub=None, policy=make_policy("greedy", 0))


def test_restart_takes_back_the_spectra_already_commanded(small_config, tmp_path):
    """Follow-up state comes back from the journal: an object already observed is not
    offered again (one whose spectrum failed is), its label is known, tonight's spectrum
    time counts against the telescope's budget, and target ids go on after the last."""

    from brain.config import load_config
    from brain.core.events import Command
    from drivers.clock import parse_start

    config = load_config(small_config)
    t0 = parse_start(START)
    path = tmp_path / "journal.sqlite"
    # two objects, three detections each; a spectrum of the first
    j, spec = _journal_with_a_spectrum(config, path, t0, 7, ((150.0, 30.0), (151.0, 31.0)))
    failed = Command(spec, "spectrum", {"ra_deg": 151.0, "dec_deg": 31.0, "seconds": 600.0,
                                        "target_id": f"{spec}-000008"}, deadline=t0 + 3000)
    j.command("old-session", failed, t0 + 1000)
    j.finish(failed.cmd_id, "failed", t0 + 1001, code="device_fault", message="too faint")
    j.close()

    d = _restart_with_followup(config, path, t0 + 1100)
    try:
        fu = d.core.followup
        observed, refused = (int(x) for x in d.core.associator.locate([150.0, 151.0],
                                                                       [30.0, 31.0]))
        assert observed >= 0 and refused >= 0 and observed != refused
        assert observed in fu.taken and refused not in fu.taken
        assert fu.labels == {observed: "SNIa"}
        assert fu.specs[spec].used_s == 700.0  # sent at t0+200, done at t0+900
        assert fu.records[f"{spec}-000007"].status == "done"
        assert next(fu._seq) == 9  # the next target is <spec>-000009
    finally:
        d.close()


def test_a_new_store_beside_a_journal_with_spectra_starts(small_config, tmp_path):
    """A journal with spectra and a new, empty store (moved to PostgreSQL, or the store
    lost): the catalogue knows none of the spectra's objects. The daemon starts, counts
    the spectroscopic time already spent and numbers its next target after them (a
    restart used to die here with an IndexError)."""
    from brain.config import load_config
    from drivers.clock import parse_start

    config = load_config(small_config)
    t0 = parse_start(START)
    path = tmp_path / "journal.sqlite"
    j, spec = _journal_with_a_spectrum(config, path, t0, 4)
    j.close()
    d = _restart_with_followup(config, path, t0 + 1100)
    try:
        fu = d.core.followup
        assert d.core.associator.n_objects == 0
        assert fu.taken == set() and fu.records == {}
        assert fu.specs[spec].used_s == 700.0
        assert next(fu._seq) == 5
    finally:
        d.close()


def test_run_refuses_bad_input_in_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [(["run", "--metrics-port", str(busy.getsockname()[1]), "--journal",
               str(tmp_path / "busy" / "j.sqlite"), "--hosting", "local"],
              "--metrics-port"),(["run", "--speed", "0"], "--speed"),
             (["run", "--start", "yesterday"], "ISO"),
             (["run", "--router", "tcp://0.0.0.0:5550", "--security", "none"], "non-loopback"),
             (["run", "--router", "tcp://10.0.0.1:5550"], "--keys"),
             (["sim-drivers", "--only", "xx.g01.g"], "unknown device"),
             (["run", "--journal", str(tmp_path / "no" / "such" / "dir" / "j.sqlite"),
               "--config", str(tmp_path / "missing.yaml")], "not found"),
             (["run", "--start", START, "--until", "2026-12-15T10:00:00", "--journal",
               str(tmp_path / "until" / "j.sqlite"), "--hosting", "local",
               "--metrics-port", "0"], "--until 2026-12-15T10:00:00 is not after --start")]
    (tmp_path / "until").mkdir()
    for args, needle in cases:
        r = run_brain(*args, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
        assert "Traceback" not in r.stderr
    busy.close()
    # The busy metrics port stopped the start before the journal was made, and the
    # journal's directory that this start created is gone again.
    assert not (tmp_path / "busy").exists()
    assert not (tmp_path / "until" / "j.sqlite").exists()


def test_until_behind_the_journals_world_time_stops_the_start_in_one_line(small_config,
                                                                          tmp_path):
    """A rehearsal restarted on a journal whose world time lies a month later (written
    by a brain that took world time from a device's clock) resumes a month later, where
    --until lies in the past: the start says so in one line, exits 2, and leaves the
    journal as it was (it used to run for 0 s and exit 0 without a word)."""
    from drivers.clock import parse_start

    journal = tmp_path / "journal.sqlite"
    j = Journal(journal)
    j.start_session("old", parse_start(START))
    with j.transaction():
        j.event(parse_start(START) + 30 * 86400.0, "xl.wx", "state", {"state": "idle"})
    j.close()
    r = run_brain("run", "--config", str(small_config), "--start", START, "--speed", SPEED,
                  "--until", "2026-12-15T12:00:00", "--journal", str(journal),
                  "--hosting", "local", "--metrics-port", "0", "--router",
                  f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}",
                  timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--until 2026-12-15T12:00:00Z is already past" in lines[0]
    assert f"the journal {journal} reaches 2027-01-14T11:00:00Z" in lines[0]
    assert query(journal, "SELECT session FROM sessions") == [("old",)]


class Station(Device):
    """Xinglong's weather station, on its own clock, reporting at every turn."""

    kind = "weather"

    def __init__(self):
        super().__init__("xl.wx", "xl")

    def events(self, now):
        return [("weather", {"wind_mps": 2.0, "humidity": 0.3, "rain": False, "cloud": 0.1,
                             "seeing_arcsec": 1.2, "dew_margin_c": 5.0})]


def test_a_device_clock_a_month_ahead_moves_no_world_time(small_config, tmp_path):
    """A weather station whose clock runs a month ahead: its reports are refused on the
    link (counted), never journalled, never reach the core, so the journal's last world
    time (where a restarted rehearsal resumes) stays the brain's."""
    from prometheus_client import CollectorRegistry

    from brain.config import config_from_dict
    from brain.shells.daemon import Daemon
    from drivers.clock import WorldClock, parse_start

    config = config_from_dict(yaml.safe_load(small_config.read_text()))
    t = parse_start(START)
    d = Daemon(config, tmp_path / "journal.sqlite", WorldClock(t, 60.0),
               router=f"tcp://127.0.0.1:{free_port()}", pub=None,
               registry=CollectorRegistry())
    d.clock.sync(t)
    host = DeviceHost([Station()], d.link.router_endpoint,
                      WorldClock(t + 30 * 86400.0, 60.0))
    try:
        t_end = time.monotonic() + 10
        while d.link.metrics.counts.get(("ahead", "xl.wx"), 0) < 3:
            assert time.monotonic() < t_end, d.link.metrics.counts
            d.step()
            host.step(1)
        assert d.journal.events_named("weather", 0, math.inf) == []
        assert d.core.sites["xl"].weather is None
        assert d.core.sites["xl"].verdict.rule == "weather_missing"
        assert d.journal.last_world_time() < d.clock.now() + 1.0
        assert host.protocol_errors == {} and d.link.metrics.counts[("errors",
                                                                     "bad_message")] >= 3
    finally:
        host.close()
        d.close()


def test_keys_creates_an_authorised_pair(tmp_path):
    r = run_brain("keys", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert names == ["authorized", "brain.key", "brain.key_secret", "devices.key",
                     "devices.key_secret"]
    assert [p.name for p in (tmp_path / "k" / "authorized").iterdir()] == ["devices.key"]
    assert oct(os.stat(tmp_path / "k" / "brain.key_secret").st_mode)[-3:] == "600"
    again = run_brain("keys", str(tmp_path / "k"))
    assert again.returncode == 2 and "exists" in again.stderr


def test_failsafe_option_reaches_the_devices(small_config, tmp_path):
    """`brain run --failsafe-s 7`: the WELCOME tells each device to close on its own after
    7 s without the brain (the option used to be checked and then dropped: always 60)."""
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daemon = subprocess.Popen(
        brain_cmd("run", "--config", str(small_config), "--start", START, "--speed", SPEED,
                  "--journal", str(tmp_path / "j.sqlite"), "--hosting", "local",
                  "--metrics-port", "0", "--router", router, "--pub", pub,
                  "--failsafe-s", "7"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from drivers.clock import WorldClock, parse_start

    host = DeviceHost([Station()], router, WorldClock(parse_start(START), float(SPEED)),
                      follow_brain_clock=True)
    try:
        t_end = time.monotonic() + 120
        while not host.links["xl.wx"].welcomed:
            assert time.monotonic() < t_end and daemon.poll() is None, "no WELCOME"
            host.step(0.2)
        assert host.links["xl.wx"].failsafe_s == 7.0
    finally:
        host.close()
        stop_procs([daemon])
