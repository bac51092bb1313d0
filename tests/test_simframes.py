"""A rehearsal from frames (``brain sim-drivers --frames``, drivers/simframes.py): one
group's exposures of four fields, served by a real device host to a real BrainLink on a
simulated clock, each rendered and measured by the photometry pipeline in the frames
worker process. Their ``detections`` events are checked against the simulated sky (the
positions, magnitudes and reference of the sources they are matched to) and against the
catalogue path cropped to the same footprint on the same exposures. Also the command
line's refusals of bad combinations of the frames options."""

from __future__ import annotations

import functools
import math
import os
import threading
import time

import numpy as np
import pytest
import yaml
from conftest import REPO, run_brain

from brain.config import load_config, with_climate
from drivers.clock import WorldClock, parse_start
from drivers.device import DeviceHost
from drivers.link import BrainLink, CommandDone, DeviceEvent, DeviceSpec
from drivers.simdevices import SimArray, SimTelescope
from drivers.simframes import FRAME_PX, FootprintPath, FramesPath, frame_wcs, in_frame
from observatory.ephemeris import night_date
from observatory.sky import FieldGrid
from observatory.visibility import NightCache
from simulator.environment import make_environment

START = "2026-12-15T15:30:00"  # Xinglong dark, the Galactic anticentre near the zenith
SPEED = 20.0
SEED = 7
N_FIELDS = 4


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    d = yaml.safe_load((REPO / "brain/configs/sitian-54.yaml").read_text())
    d["sites"] = [dict(d["sites"][0], groups=1)]
    d["spectrographs"] = [d["spectrographs"][0]]
    path = tmp_path_factory.mktemp("cfg") / "xl1.yaml"
    path.write_text(yaml.safe_dump(d))
    config = with_climate(load_config(str(path)), "clear")
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=2)
    start = parse_start(START)
    env = make_environment(config, SEED, night_date(config, start), 1, "clear", cache)
    return config, cache, env, start


def _fields(array: SimArray, site: str, t: float) -> np.ndarray:
    """The N_FIELDS fields above 50° with the most simulated sources on their frame."""
    grid, ph, pop = array.cache.grid, array.photometry, array.env.population
    array.ensure_night(t)
    alt = array.world.sky.alt_deg(site, t, np.arange(grid.size))
    up = np.flatnonzero(alt > 50)
    n = []
    for f in up:
        src = ph.sources[ph.offsets[f]:ph.offsets[f + 1]]
        n.append(in_frame(frame_wcs(grid, f, FRAME_PX), FRAME_PX, pop.ra_deg[src],
                          pop.dec_deg[src]).sum())
    return up[np.argsort(n, kind="stable")[::-1][:N_FIELDS]]


class Rig:
    """A BrainLink and a DeviceHost (in a thread) on one simulated clock; the link's
    events are collected, and each command's wall-clock round trip is timed."""

    def __init__(self, config, devices, start: float):
        specs = {d.id: DeviceSpec(d.kind, d.site, d.group, d.band) for d in devices}
        self.link = BrainLink(specs, router="tcp://127.0.0.1:*", pub=None,
                              clock=WorldClock(start, SPEED), heartbeat_s=1.0)
        self.host = DeviceHost(devices, self.link.router_endpoint, WorldClock(start, SPEED),
                               follow_brain_clock=True)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.seen: list = []
        self.round_trip_s: list[float] = []
        self._n = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.wait(lambda: set(specs) <= set(self.link.up_devices()), 30, "HELLOs")

    def _serve(self):
        try:
            self.host.run(self.stop.is_set)
        except BaseException as exc:  # reported by wait()
            self.errors.append(exc)

    def close(self):
        self.stop.set()
        self.thread.join(15)
        self.host.close()
        self.link.close()

    def wait(self, cond, timeout_s: float, what: str):
        end = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > end or self.errors:
                pytest.fail(f"waiting for {what}: {self.errors!r}", pytrace=False)
            self.seen += self.link.poll(20)

    def run(self, commands: list[tuple[str, str, dict]]) -> list[dict]:
        """Send commands at once and wait for all their DONEs (results in order)."""
        ids, t0 = [], time.monotonic()
        for device, name, args in commands:
            self._n += 1
            ids.append(f"c{self._n}")
            assert self.link.send_command(device, ids[-1], name, args,
                                          self.link.clock.now() + 600, name == "open") is None
        done: dict[str, CommandDone] = {}

        def finished():
            for e in self.seen:
                if isinstance(e, CommandDone) and e.cmd_id in ids and e.cmd_id not in done:
                    done[e.cmd_id] = e
                    self.round_trip_s.append(time.monotonic() - t0)
            return len(done) == len(ids)

        self.wait(finished, 60, f"{[c[1] for c in commands]}")
        return [done[i].result for i in ids]

    def detections(self) -> dict[str, dict]:
        return {e.data["obs_id"]: e.data for e in self.seen
                if isinstance(e, DeviceEvent) and e.name == "detections"}


def test_a_frames_rehearsal_sends_the_pipelines_detections_like_the_catalogue(sky):
    config, cache, env, start = sky
    array = SimArray(config, env, cache, frames=functools.partial(FramesPath,
                                                                  frame_px=FRAME_PX))
    rows: list[tuple] = []
    queue = array.queue
    array.queue = lambda dev, row: (rows.append(row), queue(dev, row))
    tels = [d for d in array.devices() if isinstance(d, SimTelescope)]
    fields = _fields(array, tels[0].site, start)
    rig = Rig(config, tels, start)
    # The statuses asked while frames are being measured: the host's loop answers them
    # at once (the frames are made in another process; sep holds the GIL while it works).
    status_s: list[float] = []
    try:
        assert array.frames.worker_pid() != os.getpid()
        rig.run([(t.id, "open", {}) for t in tels])
        n = 0
        for f in fields:
            grid = cache.grid
            rig.run([(t.id, "slew", {"ra_deg": float(grid.ra_deg[f]),
                                     "dec_deg": float(grid.dec_deg[f])}) for t in tels])
            cmds = []
            for t in tels:
                n += 1
                cmds.append((t.id, "expose", {"seconds": 30.0, "obs_id": f"sf-{n}",
                                              "field_id": int(f)}))
            rig.run(cmds)
            for _ in range(8):  # while this field's frames are made
                k = len(rig.round_trip_s)
                rig.run([(tels[0].id, "status", {})])
                status_s += rig.round_trip_s[k:]
        rig.wait(lambda: len(rig.detections()) == n, 120, "every exposure's detections")
        got = rig.detections()
    finally:
        rig.close()
        array.close()
    assert len(rows) == n == 3 * N_FIELDS
    assert max(status_s) < 0.5, status_s

    # The catalogue path on the same exposures, cropped to the same footprints.
    cat = SimArray(config, env, cache, frames=functools.partial(FootprintPath,
                                                                frame_px=FRAME_PX))
    cat_tels = {d.id: d for d in cat.devices() if isinstance(d, SimTelescope)}
    queued = [(cat_tels[r[1]], r, None) for r in rows]
    cat._publish(queued, *cat.frames.detect(cat, queued))
    ref_events = {data["obs_id"]: data for d in cat_tels.values() for _n, data in d.outbox}

    pop, ph, bands = env.population, array.photometry, config.camera.bands
    n_frames, n_cat, bright, found, pos_err, dmag, pulls = [], [], 0, 0, [], [], []
    for row in rows:
        ev, ref = got[row[0]], ref_events[row[0]]
        # The same message as the catalogue path's, field for field.
        assert set(ev) == set(ref) and ev["parts"] == 1
        assert all(set(s) == {"ra_deg", "dec_deg", "mag", "mag_err", "truth", "ref_mag"}
                   for s in ev["sources"])
        n_frames.append(len(ev["sources"]))
        n_cat.append(len(ref["sources"]))
        # The pipeline's 5-sigma aperture limit: 0.2-0.7 mag brighter than the PSF m5.
        assert 0.2 < row[14] - ev["limiting_mag"] < 0.7, (row[14], ev["limiting_mag"])
        f, b, t_mid = int(row[5]), bands.index(row[4]), 0.5 * (row[8] + row[9])
        wcs = frame_wcs(cache.grid, f, FRAME_PX)
        src = np.array([s["truth"] for s in ev["sources"]], dtype=np.int64)
        ra = np.array([s["ra_deg"] for s in ev["sources"]])
        dec = np.array([s["dec_deg"] for s in ev["sources"]])
        assert in_frame(wcs, FRAME_PX, ra, dec).all()
        for s in ev["sources"]:
            if s["truth"] < 0:
                continue
            tr = s["truth"]
            true = float(pop.magnitudes([tr], t_mid, b)[0])
            d = math.hypot((s["ra_deg"] - pop.ra_deg[tr]) * math.cos(math.radians(s["dec_deg"])),
                           s["dec_deg"] - pop.dec_deg[tr]) * 3600
            pos_err.append(d)
            if true < ev["limiting_mag"] - 1.0:  # no Eddington bias
                dmag.append(s["mag"] - true)
                pulls.append(dmag[-1] / s["mag_err"])
            # ref_mag: the survey's reference at the source (its own entry there).
            r = float(ph.reference[tr, b])
            if math.isfinite(r):
                assert s["ref_mag"] == pytest.approx(r, abs=1e-5)
        # Every bright simulated source well inside the frame is detected and matched.
        on = ph.sources[ph.offsets[f]:ph.offsets[f + 1]]
        x, y = wcs.wcs_world2pix(pop.ra_deg[on], pop.dec_deg[on], 0)
        inner = (x > 20) & (x < FRAME_PX - 21) & (y > 20) & (y < FRAME_PX - 21)
        true = pop.magnitudes(on[inner], t_mid, b)
        want = on[inner][(true < ev["limiting_mag"] - 1.0) & (true > 14.0)]
        bright += want.size
        found += int(np.isin(want, src).sum())
    n_frames, n_cat = np.array(n_frames), np.array(n_cat)
    # Detections per exposure: the pipeline's aperture photometry reaches 0.4 mag less
    # deep than the catalogue's PSF m5, and each path has its own spurious rows.
    ratio = n_frames.sum() / n_cat.sum()
    assert n_cat.sum() >= 40, n_cat
    assert 0.65 <= ratio <= 1.15, (ratio, n_frames, n_cat)
    assert np.corrcoef(n_frames, n_cat)[0, 1] > 0.6, (n_frames, n_cat)
    # Most detections are simulated sources, at their positions and magnitudes (those
    # a magnitude above the limit: within 0.05 mag + 3 sigma, unbiased).
    matched = len(pos_err) / n_frames.sum()
    assert matched >= 0.85, matched
    assert np.median(pos_err) < 0.2 and np.percentile(pos_err, 90) < 0.5, pos_err
    dmag, pulls = np.array(dmag), np.array(pulls)
    assert dmag.size >= 12
    assert np.mean(np.abs(dmag) < 0.05 + 3 * np.abs(dmag / pulls)) >= 0.9, dmag
    assert abs(np.median(dmag)) < 0.03 and abs(np.median(pulls)) < 1.0, (dmag, pulls)
    # ... and every bright one on the frame is found (deblended ones included).
    assert bright >= 12 and found / bright >= 0.9, (found, bright)


@pytest.mark.parametrize(("args", "needle"), [
    (["--frames", "--frame-footprint"], "exclude each other"),
    (["--frame-px", "1024"], "--frame-px needs --frames or --frame-footprint"),
    (["--frames", "--frame-px", "100"], "must be between 512 and 8192"),
    (["--frames", "--only", "xl.wx,xl.spec"], "--only serves no telescope"),
])
def test_bad_frames_options_are_one_line_errors(args, needle):
    proc = run_brain("sim-drivers", "--start", START, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("brain sim-drivers: error: ") and needle in lines[0], lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""
