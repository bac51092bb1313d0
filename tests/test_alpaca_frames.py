"""The Alpaca bridge's ``--photometry`` against the real ``alpaca-simulators`` server
(tests/alpaca_rig.py), driven through a real BrainLink: open, slew, expose; the frame is
downloaded, given a WCS header from the mount's pointing and measured by the photometry
pipeline in its worker process; its ``detections`` event reaches the brain.

The simulator's camera (``cabaret``, read in the venv) and what the tolerances rest on:

* Geometry: 10 um pixels behind the template's 8 m focal length: 0.2578"/pixel (the
  bridge computes it from ``PixelSizeX`` and ``FocalLength``); a 1024 x 1024 frame is
  4.4' across. Measured: the sky is drawn north up and east left with ASCOM's pixel
  [0][0] at the top left, i.e. rotation 0 and not mirrored once the bridge puts the
  frame in FITS order; its optical axis is half a pixel from the frame's centre.
* It draws the catalogue at the mount's raw RightAscension/Declination, whatever the
  mount's EquatorialSystem: so the mount here says equJ2000 (a JNow mount's frames are
  drawn 20' off, beyond what the pipeline's refinement searches).
* PSF: Moffat (beta 2.5), FWHM = seeing 1" / scale = 3.9 pixels.
* Flux: G zero magnitude 0.7117 x 4031.5 Jy x 1.51e7 photons/s/m^2, QE 0.8, a 1 m
  aperture: 2.7e10 e-/s, 1 e-/ADU, bias 300 ADU, full well 50000 e-.
* Noise: sky 150 e-/m^2/arcsec^2/s (7.8 e-/pixel/s), read noise 6.2 e-, Poisson, and a
  scintillation term of 0.9 % of each star's flux (airmass 1.5, 0.5 m radius).

So in 1 s a G = 15 star gives 2.7e4 e- (SNR about 150; with scintillation its magnitude
scatters by about 0.012), the stars drawn here (G 13 to 17.5) peak at 7000 e- or less
(far from saturation), and the 5-sigma depth is about G = 20. The test asks for the new
star within 1.5" of its catalogue place and within 0.1 mag (8 sigma) of its magnitude,
for no calibration star to be sent (each is matched within 2" and steady to 5 sigma of
its own error and the calibration stars' 0.01), and for a depth between 19 and 21.5.
The calibration stars lie on a jittered grid at least 15" (60 pixels) apart, so no two
blend.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from alpaca_rig import start_simulator, write_catalogue
from astropy.wcs import WCS
from loopback import BrainRig, free_port, sep_deg, stop_group

from drivers.alpaca import AlpacaClient, AlpacaTelescope
from drivers.alpaca.frames import (
    AlpacaFrames,
    Exposure,
    FrameError,
    FrameOptions,
    cd_matrix,
    decode_imagebytes,
    decode_json_image,
    fits_order,
)
from drivers.framephot import FrameMeta, FrameReducer
from drivers.link import DeviceEvent, DeviceSpec
from drivers.photometry.astrometry import deproject
from drivers.sky import lst_deg

REPO = Path(__file__).resolve().parent.parent
DEVICE = "xl.g01.g"
SITE_LAT, SITE_LON = 40.3933, 117.575
FRAME_PX = 1024
SCALE = 206264.806 * 10e-6 / 8.0  # arcsec per pixel: 10 um pixels, 8 m focal length
NEW_MAG = 15.0


def _grid(rng, ra0: float, dec0: float, n: int = 11, pitch_px: float = 80.0):
    """Stars on a jittered n x n grid around (ra0, dec0), G 13 to 17.5."""
    k = (np.arange(n) - (n - 1) / 2) * pitch_px
    xi, eta = np.meshgrid(k, k)
    xi = (xi.ravel() + rng.uniform(-10, 10, xi.size)) * SCALE / 3600
    eta = (eta.ravel() + rng.uniform(-10, 10, eta.size)) * SCALE / 3600
    ra, dec = deproject(xi, eta, ra0, dec0)
    return ra, dec, rng.uniform(13.0, 17.5, ra.size)


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    """Two fields an hour east of the meridian: A (its stars in the calibration CSV but
    one, the "new" star) and B, 2 degrees north (its stars in the simulator's sky
    only: a frame the pipeline cannot calibrate)."""
    home = tmp_path_factory.mktemp("alpaca_frames")
    rng = np.random.default_rng(20260616)
    ra0 = (lst_deg(time.time(), SITE_LON) + 15.0) % 360.0
    a = {"ra": ra0, "dec": 40.0}
    b = {"ra": ra0, "dec": 42.0}
    ra, dec, mag = _grid(rng, a["ra"], a["dec"])
    new = ra.size // 2 + 3  # a grid point near the centre, not in the CSV
    mag[new] = NEW_MAG
    rb, db, mb = _grid(rng, b["ra"], b["dec"])
    write_catalogue(home / "sky.db", np.r_[ra, rb], np.r_[dec, db], np.r_[mag, mb])
    keep = np.arange(ra.size) != new
    csv = home / "calibration.csv"
    csv.write_text("ra_deg,dec_deg,mag\n" + "".join(
        f"{r:.8f},{d:.8f},{m:.4f}\n" for r, d, m in zip(ra[keep], dec[keep], mag[keep],
                                                       strict=True)))
    return {"home": home, "a": a, "b": b, "csv": csv, "stars": (ra[keep], dec[keep],
                                                                mag[keep]),
            "new": (ra[new], dec[new], mag[new])}


@pytest.fixture(scope="module")
def server(sky):
    sim = start_simulator(sky["home"], sky["home"] / "sky.db", equatorial_system=2,
                          camera=dict(cameraxsize=FRAME_PX, cameraysize=FRAME_PX,
                                      numx=FRAME_PX, numy=FRAME_PX, exposuremin=0.01))
    yield sim
    stop_group(sim.proc)


@pytest.fixture(scope="module")
def rig(server, sky):
    client = AlpacaClient("127.0.0.1", server.port, poll_s=0.25)
    frames = AlpacaFrames(client, FrameReducer(sky["csv"], None), FrameOptions())
    tel = AlpacaTelescope(DEVICE, "xl", 1, "g", client, lat_deg=SITE_LAT, lon_deg=SITE_LON,
                          frames=frames)
    tel.start(timeout_s=20.0)
    submitted: list = []  # what the bridge handed to the pipeline (meta, data, header)
    submit = frames.reducer.submit

    def spy(meta, data, header):
        submitted.append((meta, data, header))
        return submit(meta, data, header)

    frames.reducer.submit = spy

    def diagnostics() -> str:
        return (f"telescope state: {tel.state(time.time())!r}\nframes: {frames.stats!r} "
                f"{frames.last_download!r}\npipeline: {frames.reducer.stats!r} "
                f"{frames.reducer.last_note!r}\n"
                f"server log:\n{server.log.read_text()[-1500:]}")

    r = BrainRig({DEVICE: DeviceSpec("telescope", "xl", 1, "g")}, [tel], diagnostics)
    # The device host's loop turns, timed: how long the protocol loop is ever held up.
    starts: list[float] = []
    step = r.host.step

    def timed_step(timeout_ms: int = 50) -> None:
        starts.append(time.perf_counter())
        step(timeout_ms)

    r.host.step = timed_step
    r.tel, r.frames, r.submitted, r.starts = tel, frames, submitted, starts
    yield r
    r.close()
    tel.close()
    client.close()


def _detections(rig, obs_id: str) -> list[DeviceEvent]:
    return [e for e in rig.seen if isinstance(e, DeviceEvent) and e.name == "detections"
            and e.data["obs_id"] == obs_id]


def _centroid(data: np.ndarray, x: float, y: float, half: int = 7) -> tuple[float, float]:
    i, j = round(y), round(x)
    box = data[i - half:i + half + 1, j - half:j + half + 1].astype(float)
    box -= np.median(box)
    box[box < 0] = 0
    yy, xx = np.mgrid[i - half:i + half + 1, j - half:j + half + 1]
    return float((xx * box).sum() / box.sum()), float((yy * box).sum() / box.sum())


def test_frame_to_detections(rig, sky):
    assert rig.done(DEVICE, "open") == {}
    a = sky["a"]
    rig.done(DEVICE, "slew", {"ra_deg": a["ra"], "dec_deg": a["dec"]})
    n0 = len(rig.starts)
    res = rig.done(DEVICE, "expose", {"seconds": 1.0, "obs_id": "fr-1", "field_id": 7})
    rig.wait(lambda: _detections(rig, "fr-1"), 60.0, "the detections of fr-1")
    gaps = np.diff(rig.starts[n0:])
    (ev,) = _detections(rig, "fr-1")
    d = ev.data
    assert (d["part"], d["parts"], d["field_id"], d["band"]) == (0, 1, 7, "g"), d
    assert d["t_mid"] == pytest.approx((res["t_start"] + res["t_end"]) / 2), (d, res)
    assert 19.0 < d["limiting_mag"] < 21.5, d["limiting_mag"]

    # The header the bridge made: the calibration stars where its WCS puts them (the
    # orientation, the scale and the pointing), before the pipeline refines anything.
    (meta, data, header), = rig.submitted
    assert meta.obs_id == "fr-1" and data.shape == (FRAME_PX, FRAME_PX)
    assert header["GAIN"] == 1.0 and header["SATURATE"] == 50000.0  # full well / gain
    w = WCS(header)
    ra, dec, mag = sky["stars"]
    bright = np.argsort(mag)[:15]
    px, py = w.all_world2pix(ra[bright], dec[bright], 0)
    off = np.array([np.subtract(_centroid(data, x, y), (x, y)) for x, y in zip(px, py,
                                                                              strict=True)])
    assert np.all(np.hypot(*off.T) < 2.0), off  # pixels: the simulator's axis is 0.7 off
    assert abs(w.proj_plane_pixel_scales()[0].value * 3600 / SCALE - 1) < 1e-6

    # What was sent: the new star, at its catalogue place, with its magnitude; none of
    # the calibration stars.
    src = d["sources"]
    new_ra, new_dec, new_mag = sky["new"]
    near = [s for s in src if sep_deg(s["ra_deg"], s["dec_deg"], new_ra, new_dec) * 3600 < 1.5]
    assert len(near) == 1, (src, sky["new"])
    assert abs(near[0]["mag"] - new_mag) < 0.1 and near[0]["mag_err"] < 0.05, near
    assert near[0]["ref_mag"] is None, near  # the calibration stars cover it: nothing there
    for s in src:
        sep = np.array([sep_deg(s["ra_deg"], s["dec_deg"], r, dd) for r, dd in zip(ra, dec,
                                                                                   strict=True)])
        assert sep.min() * 3600 > 2.0, (s, sep.min() * 3600)

    # The protocol loop was never held up long by the download, the header or the
    # hand-over to the pipeline (its turns normally start every 20 ms or less).
    assert gaps.max() < 0.25, (gaps.max(), rig.frames.stats)
    assert rig.frames.stats["loop_s_max"] < 0.05, rig.frames.stats
    assert rig.frames.last_download["transfer"] == "imagebytes", rig.frames.last_download


def test_unmeasurable_frame(rig, sky):
    """A frame without calibration stars: the reason logged, no event, still serving."""
    b = sky["b"]
    failed = rig.frames.reducer.stats["failed"]
    rig.done(DEVICE, "slew", {"ra_deg": b["ra"], "dec_deg": b["dec"]})
    rig.done(DEVICE, "expose", {"seconds": 1.0, "obs_id": "fr-2", "field_id": 8})
    rig.wait(lambda: rig.frames.reducer.stats["failed"] > failed, 60.0,
             "the pipeline to give up on fr-2")
    assert rig.frames.reducer.last_note.startswith("fr-2: "), rig.frames.reducer.last_note
    assert "\n" not in rig.frames.reducer.last_note
    rig.seen += rig.link.poll(200)
    assert not _detections(rig, "fr-2")
    assert rig.done(DEVICE, "status")["state"] == "idle"
    a = sky["a"]
    rig.done(DEVICE, "slew", {"ra_deg": a["ra"], "dec_deg": a["dec"]})
    rig.done(DEVICE, "expose", {"seconds": 1.0, "obs_id": "fr-3", "field_id": 7})
    rig.wait(lambda: _detections(rig, "fr-3"), 60.0, "the detections of fr-3")


def test_image_decoding():
    """ImageBytes and JSON answers to the same [x][y] array; FITS order; the CD matrix."""
    xy = np.arange(12, dtype=np.uint16).reshape(4, 3)  # NumX 4, NumY 3
    head = np.array([1, 0, 0, 0, 44, 2, 8, 2, 4, 3, 0], "<i4").tobytes()
    assert (decode_imagebytes(head + xy.tobytes()) == xy).all()
    body = (b'{"Type": 2, "Rank": 2, "Value": [[0, 1, 2], [3,4,5],[6, 7, 8] ,[9,10,11]], '
            b'"ErrorNumber": 0, "ErrorMessage": ""}')
    assert (decode_json_image(body) == xy).all()
    with pytest.raises(FrameError, match="rank 3"):
        decode_json_image(b'{"Value": [[[1, 2, 3]]], "ErrorNumber": 0}')
    with pytest.raises(FrameError, match="0x40b: no image"):
        decode_json_image(b'{"Value": 0, "ErrorNumber": 1035, "ErrorMessage": "no image"}')
    rank3 = np.array([1, 0, 0, 0, 44, 2, 8, 3, 4, 3, 3], "<i4").tobytes()
    with pytest.raises(FrameError, match="rank 3"):
        decode_imagebytes(rank3 + bytes(72))
    f = fits_order(xy)  # ASCOM [x][y], row 0 on top -> [y][x], row 0 at the bottom
    assert f.shape == (3, 4) and f.flags.c_contiguous
    assert f[0, 0] == xy[0, 2] and f[2, 0] == xy[0, 0] and f[2, 3] == xy[3, 0]
    # +y is north and +x west at rotation 0; +y east at 90; mirrored: +x east
    for rot, mirrored, x_dir, y_dir in ((0, False, (-1, 0), (0, 1)), (90, False, (0, 1), (1, 0)),
                                        (0, True, (1, 0), (0, 1))):
        cd = cd_matrix(3600.0, 3600.0, rot, mirrored)
        assert np.allclose(cd[:, 0], x_dir) and np.allclose(cd[:, 1], y_dir), (rot, cd)


class _Pipeline:
    """A stand-in for FrameReducer: records what it is given."""

    def __init__(self):
        self.got: list = []

    def submit(self, meta, data, header) -> bool:
        if meta.obs_id == "dead":
            raise BrokenProcessPool("A child process terminated abruptly")
        self.got.append(meta.obs_id)
        return True

    def events(self) -> list:
        return []

    def close(self) -> None:
        pass


def test_one_download_at_a_time(caplog):
    """The next exposure waits for the last frame's download; one that outlasts the
    limit is abandoned (its frame dropped); a failed download, and a pipeline whose
    worker is gone, are one log line each."""
    pipeline = _Pipeline()
    frames = AlpacaFrames(None, pipeline, wait_limit_s=0.3)
    gate = threading.Event()

    def slow(exp):
        if not gate.wait(5.0):
            raise FrameError("gate never opened")
        if exp.meta.obs_id == "bad":
            raise FrameError("HTTP 500 Internal Server Error: boom")
        return np.zeros((2, 2)), None

    frames._frame = slow

    def exposure(obs_id: str) -> Exposure:
        return Exposure(FrameMeta(obs_id, 1, "g", 0.0, 20.0), 10.0, 20.0, 0.0, 1.0)

    frames.fetch(exposure("one"))
    step = frames.wait_step()
    assert step.start() is False and step.done() is False  # StartExposure must wait
    gate.set()
    t_end = time.monotonic() + 5.0
    while not step.done() and time.monotonic() < t_end:
        time.sleep(0.01)
    assert frames.events() == [] and pipeline.got == ["one"]
    assert frames.wait_step().start() is True  # nothing downloading: no wait

    gate.clear()
    frames.fetch(exposure("two"))
    step = frames.wait_step()
    assert step.start() is False
    time.sleep(0.35)
    with caplog.at_level(logging.WARNING, logger="sitian.alpaca"):
        assert step.done() is True  # abandoned after wait_limit_s
        gate.set()
        time.sleep(0.1)
        for obs_id in ("bad", "dead"):
            frames.fetch(exposure(obs_id))
            t_end = time.monotonic() + 5.0
            while frames.downloading() and time.monotonic() < t_end:
                time.sleep(0.01)
            assert frames.events() == []
    assert pipeline.got == ["one"], pipeline.got  # "two" abandoned, "bad" failed
    assert frames.stats["abandoned"] == 1 and frames.stats["download_failed"] == 1
    assert frames.stats["submit_failed"] == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any("two: download still running" in m for m in lines), lines
    assert "frame bad (field 1) not downloaded: HTTP 500 Internal Server Error: boom" \
        in lines, lines
    assert any(m.startswith("frame dead (field 1) not measured: the photometry worker is "
                            "gone") for m in lines), lines


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drivers.alpaca", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_command_line_errors(tmp_path):
    tel = ["--device-id", DEVICE, "--site", "xl", "--group", "1", "--band", "g",
           "--alpaca-port", str(free_port()), "--connect-timeout", "1"]
    bad = tmp_path / "stars.csv"
    bad.write_bytes(b"\xff\xfe not text")
    for args, says in ((["--reference", str(tmp_path / "none.csv")], "not found"),
                       (["--reference", str(bad)], "not a UTF-8 text file"),
                       ([], "--photometry needs --reference")):
        proc = _cli(*tel, "--photometry", *args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "drivers.alpaca: error: " in lines[0], proc.stderr
        assert says in lines[0], (says, lines[0])
    proc = _cli(*tel, "--pixel-scale", "0.5", "--rotation", "3")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--pixel-scale, --rotation need" in lines[0] and "--photometry" in lines[0], lines
