"""The INDI bridge's ``--photometry`` against a real ``indiserver`` (indi-bin): the CCD
simulator's directory mode (``CCD_DIRECTORY_LOCATION``, ``CCD_DIRECTORY_TOGGLE``) serves
a frame rendered here (``simulator/frames.py``: a star field and three transients that
are not in the calibration stars) as its exposures; the bridge receives each over INDI
(BLOB), measures it in its worker process and sends the exposure's ``detections`` to a
real BrainLink.

INDI 1.9.9's simulator keeps only the file's pixels and ``PIXSIZE1`` and writes its own
header: a WCS (``WCS_CONTROL``) only with the telescope's focal length (``SCOPE_INFO``)
and a client-set ``CCD_ROTATION``, centred on the mount's position, with RA and Dec
growing with the pixel index. The frame is rendered in that orientation; the header's
WCS is then off by the mount's epoch-of-date conversion and INDI's pixel-centre
convention, which the pipeline's refinement takes out. Without INDI's WCS the bridge
makes one from the mount's pointing and the header's pixel size and focal length;
without a focal length either, the frame is not measured (one logged line) and the
bridge serves on; a frame that never comes is given up after the timeout. The client's
BLOB decoding (a 2048² frame as ``.fits`` and ``.fits.z``, formats it skips) is checked
on a stream written here, and the command line's one-line errors without a server.

Without ``indiserver`` these tests fail (install indi-bin); ``SITIAN_SKIP_INDI=1`` skips
them instead.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from loopback import BrainRig, free_port, require_indi, sep_deg, start_server, stop_group

from drivers.framephot import FrameReducer
from drivers.indi import IndiClient, IndiTelescope, lst_deg
from drivers.link import DeviceEvent, DeviceSpec
from simulator.frames import FrameSpec, render_frame, star_field

REPO = Path(__file__).resolve().parent.parent
DEVICE = "xl.g01.g"
CCD = "CCD Simulator"
MOUNT = "Telescope Simulator"
NO_MOUNT = "None"
SITE_LAT, SITE_LON, SITE_ELEV = 40.3933, 117.575, 900.0  # Xinglong
SIMULATORS = ("indi_simulator_telescope", "indi_simulator_ccd")
PIXEL_UM, FOCAL_MM = 5.0, 1031.324  # 1.000 arcsec per pixel
DEC0 = 80.0  # on the meridian, 50 degrees high at Xinglong
TRANSIENTS_XY = ((300.3, 250.1), (700.7, 800.4), (512.2, 600.9))  # pixels, as rendered
TRANSIENTS_MAG = (16.0, 17.0, 18.0)



class Sky:
    """The field on the meridian now (the mount goes there), its calibration stars and
    the frame the camera will serve: 1024 x 1024 at 1"/pixel, RA and Dec growing with
    the pixel index (INDI's orientation)."""

    def __init__(self, root: Path):
        self.ra0 = lst_deg(time.time(), SITE_LON) % 360.0
        spec = FrameSpec(ra_deg=self.ra0, dec_deg=DEC0, nx=1024, ny=1024,
                         pixel_scale_arcsec=1.0, exposure_s=30.0, m5=20.0, band="g")
        rng = np.random.default_rng(7)
        ra, dec, mag = star_field(spec, 600, rng, mag_bright=13.0, margin_px=20.0)
        w = spec.true_wcs()
        tx, ty = (np.array(v) for v in zip(*TRANSIENTS_XY, strict=True))
        self.t_ra, self.t_dec = (np.asarray(a) for a in w.wcs_pix2world(tx, ty, 0))
        for a, d in zip(self.t_ra, self.t_dec, strict=True):  # alone on the sky
            assert min(sep_deg(a, d, r, e) for r, e in zip(ra, dec, strict=True)) > 4 / 3600
        img, _h = render_frame(spec, np.r_[ra, self.t_ra], np.r_[dec, self.t_dec],
                               np.r_[mag, TRANSIENTS_MAG], rng)
        self.star_ra, self.star_dec, self.star_mag = ra, dec, mag
        self.frames = root / "frames"
        self.frames.mkdir()
        hdr = fits.Header()
        hdr["PIXSIZE1"], hdr["PIXSIZE2"] = PIXEL_UM, PIXEL_UM  # the simulator needs it
        # The rendered frame has east to the left; INDI's WCS has RA growing with x.
        fits.PrimaryHDU(np.fliplr(img).astype(np.uint16), hdr).writeto(
            self.frames / "field.fits")
        self.reference = root / "stars_g.csv"
        with self.reference.open("w") as f:
            f.write("ra_deg,dec_deg,mag\n")
            for a, d, m in zip(ra, dec, mag, strict=True):
                f.write(f"{a:.8f},{d:.8f},{m:.4f}\n")


@pytest.fixture(scope="module")
def indiserver(tmp_path_factory):
    exe = require_indi(SIMULATORS)
    home = tmp_path_factory.mktemp("indi-frames-home")
    env = {**os.environ, "HOME": str(home)}
    # The camera starts told of no telescope (the driver's saved configuration, loaded
    # when it starts): it knows no focal length and no pointing until the test says so.
    (home / ".indi").mkdir()
    (home / ".indi" / f"{CCD}_config.xml").write_text(
        f"<INDIDriver><newTextVector device='{CCD}' name='ACTIVE_DEVICES'><oneText "
        f"name='ACTIVE_TELESCOPE'>{NO_MOUNT}</oneText></newTextVector></INDIDriver>\n")
    port = free_port()
    log_path = home / f"indiserver-{port}.log"
    proc = start_server([exe, "-v", "-p", str(port), "-u",
                         f"/tmp/sitian-indi-{os.getpid()}-{port}", *SIMULATORS],
                        port, log_path, env=env, cwd=home)
    yield port, log_path, home
    stop_group(proc)


class Rig(BrainRig):
    """The bridge (``--photometry --reference stars_g.csv``) served to a real BrainLink."""

    def __init__(self, port: int, log_path: Path, sky: Sky):
        self.log_path, self.sky = log_path, sky
        self.client = IndiClient("127.0.0.1", port, retry_s=0.5)
        self.reducer = FrameReducer(reference=sky.reference)
        self.device = IndiTelescope(DEVICE, "xl", 1, "g", self.client, dome=None,
                                    lat_deg=SITE_LAT, lon_deg=SITE_LON, elev_m=SITE_ELEV,
                                    reducer=self.reducer, frame_timeout_s=15.0)
        self.device.start(timeout_s=30.0)
        super().__init__({DEVICE: DeviceSpec("telescope", "xl", 1, "g")}, [self.device],
                         self._indi_diagnostics)
        # The camera serves the rendered frame and has the telescope's focal length.
        self.client.new_text(CCD, "CCD_DIRECTORY_LOCATION", {"LOCATION": str(sky.frames)})
        self.wait(lambda: self.client.value(CCD, "CCD_DIRECTORY_LOCATION", "LOCATION")
                  == str(sky.frames), 10.0, "the camera to take the frames' directory")
        self.client.new_switch(CCD, "CCD_DIRECTORY_TOGGLE",
                               {"INDI_ENABLED": True, "INDI_DISABLED": False})
        self.wait(lambda: self.client.value(CCD, "CCD_DIRECTORY_TOGGLE", "INDI_ENABLED")
                  is True, 10.0, "the camera's directory mode")

    def close(self) -> None:
        super().close()
        self.device.close()
        self.client.close()

    def _indi_diagnostics(self) -> str:
        msgs = "\n".join(f"  {d}: {m}" for d, _, m in list(self.client.messages)[-12:])
        return (f"device state: {self.device.state(time.time())!r}\n"
                f"blobs: {self.client.blob_stats}, frames: {self.device.frames.stats}, "
                f"reducer: {self.reducer.stats} {self.reducer.last_note}\n"
                f"INDI messages:\n{msgs}\nindiserver log ({self.log_path}):\n"
                f"{self.log_path.read_text()[-1500:]}")

    def camera(self, wcs: bool, focal_mm: float) -> None:
        """The camera told of the mount and the telescope's focal length, and INDI's own
        WCS on or off."""
        self.client.new_text(CCD, "ACTIVE_DEVICES", {"ACTIVE_TELESCOPE": MOUNT})
        self.wait(lambda: self.client.value(CCD, "ACTIVE_DEVICES", "ACTIVE_TELESCOPE")
                  == MOUNT, 10.0, "the camera to follow the mount")
        self.client.new_number(CCD, "SCOPE_INFO", {"FOCAL_LENGTH": focal_mm, "APERTURE": 200.0})
        self.client.new_switch(CCD, "WCS_CONTROL", {"WCS_ENABLE": wcs, "WCS_DISABLE": not wcs})
        self.wait(lambda: self.client.value(CCD, "WCS_CONTROL", "WCS_ENABLE") is wcs
                  and self.client.value(CCD, "SCOPE_INFO", "FOCAL_LENGTH") == focal_mm,
                  10.0, f"the camera's WCS {'on' if wcs else 'off'}, focal length {focal_mm}")
        if wcs:  # INDI writes a WCS only once a client has set the rotation
            self.client.new_number(CCD, "CCD_ROTATION", {"CCD_ROTATION_VALUE": 0.0})
            self.wait(lambda: (CCD, "CCD_ROTATION") in self.client.props
                      and self.client.get(CCD, "CCD_ROTATION").state == "Ok", 10.0,
                      "the camera's rotation")

    def detections(self, obs_id: str, timeout_s: float) -> list[dict]:
        out: list[dict] = []

        def arrived() -> bool:
            out[:] = [e.data for e in self.seen if isinstance(e, DeviceEvent)
                      and e.name == "detections" and e.data.get("obs_id") == obs_id]
            return bool(out) and len(out) == out[0]["parts"]

        self.wait(arrived, timeout_s, f"the detections of {obs_id}")
        return out

    def done(self, name: str, args: dict | None = None, timeout_s: float = 90.0) -> dict:
        return super().done(DEVICE, name, args, timeout_s)


@pytest.fixture(scope="module")
def rig(indiserver, tmp_path_factory):
    port, log_path, _home = indiserver
    sky = Sky(tmp_path_factory.mktemp("indi-frames-sky"))
    r = Rig(port, log_path, sky)
    assert r.done("open") == {}
    # The simulator holds a goto's hour angle while it does not track (tests/test_indi.py):
    # track first, so that it arrives and stays on the field.
    r.client.new_switch(MOUNT, "TELESCOPE_TRACK_STATE", {"TRACK_ON": True, "TRACK_OFF": False})
    r.wait(lambda: r.client.value(MOUNT, "TELESCOPE_TRACK_STATE", "TRACK_ON") is True, 10.0,
           "the mount to track")
    res = r.done("slew", {"ra_deg": sky.ra0, "dec_deg": DEC0}, timeout_s=200.0)
    assert sep_deg(res["ra_deg"], res["dec_deg"], sky.ra0, DEC0) * 3600.0 < 10.0, res
    yield r
    r.close()


def _check_transients(rig: Rig, body: dict) -> None:
    sky = rig.sky
    src = body["sources"]
    for a, d, m in zip(sky.t_ra, sky.t_dec, TRANSIENTS_MAG, strict=True):
        sep = [sep_deg(s["ra_deg"], s["dec_deg"], a, d) * 3600.0 for s in src]
        k = int(np.argmin(sep))
        assert sep[k] < 1.0, (a, d, m, src[k], sep[k])
        assert abs(src[k]["mag"] - m) < 0.1, (m, src[k])
        assert 0 < src[k]["mag_err"] < 0.1, src[k]
        # The calibration stars cover the place and hold nothing there: new.
        assert "ref_mag" in src[k] and src[k]["ref_mag"] is None, src[k]
        print(f"{body['obs_id']}: transient {m:.1f} found {sep[k]:.3f}\" off, "
              f"{src[k]['mag'] - m:+.3f} mag")
    # The steady calibration stars are not sent: nothing on a star down to 19th mag.
    bright = sky.star_mag < 19.0
    for s in src:
        near = min(sep_deg(s["ra_deg"], s["dec_deg"], a, d) for a, d in
                   zip(sky.star_ra[bright], sky.star_dec[bright], strict=True)) * 3600.0
        assert near > 2.0, (s, near)
    assert len(src) <= len(TRANSIENTS_MAG) + 3, src  # the transients, and little else


def _expose(rig: Rig, obs_id: str) -> dict:
    res = rig.done("expose", {"seconds": 1.0, "obs_id": obs_id, "field_id": 7})
    assert res["obs_id"] == obs_id, res
    return res


def test_a_frame_that_cannot_be_placed_is_logged_and_the_bridge_serves_on(rig, caplog):
    # The camera knows of no telescope yet: no focal length (SCOPE_INFO 0, and none
    # from a mount), so INDI writes no WCS and no FOCALLEN; the bridge has no
    # --pixel-scale either.
    assert rig.client.value(CCD, "ACTIVE_DEVICES", "ACTIVE_TELESCOPE") == NO_MOUNT
    assert rig.client.value(CCD, "SCOPE_INFO", "FOCAL_LENGTH") == 0.0
    assert rig.device.frames.pixel_scale is None
    caplog.set_level(logging.WARNING, logger="sitian.indi")
    _expose(rig, "phot-3")

    def reason() -> list[str]:
        return [r.getMessage() for r in caplog.records if "phot-3" in r.getMessage()]

    rig.wait(lambda: bool(reason()), 30.0, "the reason phot-3 was not measured")
    line = reason()[0]
    assert "\n" not in line and "not measured" in line and "no WCS" in line, line
    assert "--pixel-scale" in line, line
    t_end = time.monotonic() + 2.0
    rig.wait(lambda: time.monotonic() > t_end, 5.0, "a moment")
    assert not [e for e in rig.seen if isinstance(e, DeviceEvent) and e.name == "detections"
                and e.data.get("obs_id") == "phot-3"]
    # The bridge serves on: the next commands work, and a good frame is measured again.
    assert rig.done("status")["state"] in ("idle", "busy"), rig.diagnostics()
    rig.camera(wcs=True, focal_mm=FOCAL_MM)
    _expose(rig, "phot-4")
    assert math.isfinite(rig.detections("phot-4", 45.0)[0]["t_mid"])


def test_frames_with_indis_own_wcs_become_detections(rig):
    rig.camera(wcs=True, focal_mm=FOCAL_MM)
    before = rig.done("status")["photometry"]
    res = _expose(rig, "phot-1")
    parts = rig.detections("phot-1", 45.0)
    assert len(parts) == 1, parts
    body = parts[0]
    assert body["part"] == 0 and body["parts"] == 1, body
    assert body["field_id"] == 7 and body["band"] == "g", body
    assert body["t_mid"] == pytest.approx(res["t_start"] + 0.5), (body, res)
    assert 18.0 < body["limiting_mag"] < 21.0, body  # measured on the frame (m5 = 20)
    _check_transients(rig, body)
    after = rig.done("status")["photometry"]  # the state map counts the frames
    assert after["frames"] == before["frames"] + 1, (before, after)
    assert after["failed"] == before["failed"] and after["missing"] == 0, (before, after)


def test_a_frame_without_wcs_gets_one_from_the_mounts_pointing(rig):
    rig.camera(wcs=False, focal_mm=FOCAL_MM)  # INDI writes FOCALLEN and XPIXSZ, no WCS
    _expose(rig, "phot-2")
    body = rig.detections("phot-2", 45.0)[0]
    _check_transients(rig, body)


def test_a_frame_that_never_comes_is_given_up(rig, caplog):
    """The camera sends no frame (here: the bridge's link asks for none): after the
    timeout one logged line, no detections, and the bridge serves on."""
    caplog.set_level(logging.WARNING, logger="sitian.indi")
    rig.client.enable_blob(CCD, "Never", "CCD1")
    rig.device.frames.timeout_s = 2.0
    try:
        _expose(rig, "phot-5")
        rig.wait(lambda: any("phot-5" in r.getMessage() for r in caplog.records), 15.0,
                 "phot-5 to be given up")
    finally:
        rig.device.frames.timeout_s = 15.0
        rig.client.enable_blob(CCD, "Also", "CCD1")
    line = next(r.getMessage() for r in caplog.records if "phot-5" in r.getMessage())
    assert "\n" not in line and "no frame for phot-5" in line and "within 2 s" in line, line
    assert rig.done("status")["photometry"]["missing"] == 1
    _expose(rig, "phot-6")
    _check_transients(rig, rig.detections("phot-6", 45.0)[0])
    assert not [e for e in rig.seen if isinstance(e, DeviceEvent) and e.name == "detections"
                and e.data.get("obs_id") == "phot-5"]


# The client's BLOBs, from a stream written here (the server's side of the XML) -------
def _serve_xml(chunks: list[bytes]) -> tuple[int, threading.Event]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    done = threading.Event()

    def run() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)  # getProperties
        for c in chunks:
            conn.sendall(c)
        done.wait(30.0)
        conn.close()
        srv.close()

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], done


def _blob_xml(payload: bytes, fmt: str, size: int | None = None) -> bytes:
    text = base64.encodebytes(payload)  # 76-character lines, as INDI sends them
    return (b'<setBLOBVector device="Cam" name="CCD1" state="Ok">\n<oneBLOB name="CCD1" '
            b'size="%d" format="%s" len="%d">\n' % (size or len(payload), fmt.encode(),
                                                     len(payload))
            + text + b"</oneBLOB>\n</setBLOBVector>\n")


def test_the_client_decodes_frames_and_skips_what_it_cannot(caplog):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 65535, (2048, 2048), dtype=np.uint16)
    buf = io_fits(frame)
    z = zlib.compress(buf, 1)
    stream = [b'<defBLOBVector device="Cam" name="CCD1" perm="ro" state="Idle">'
              b'<defBLOB name="CCD1"/></defBLOBVector>\n',
              _blob_xml(buf, ".fits"), _blob_xml(z, ".fits.z", size=len(buf)),
              _blob_xml(b"\xff\xd8 not a FITS file", ".jpg"),
              _blob_xml(b"\xff\xd8 again", ".jpg"),
              _blob_xml(buf[:1000], ".fits").replace(b'len="1000"', b'len="2000"')]
    port, done = _serve_xml(stream)
    client = IndiClient("127.0.0.1", port, retry_s=30.0)
    caplog.set_level(logging.WARNING, logger="sitian.indi")
    t0 = time.monotonic()
    try:
        client.start(wait_s=5.0)
        assert client.wait(lambda: client.blob_stats["skipped"] == 3, 30.0), client.blob_stats
        assert client.blob_stats["received"] == 2, client.blob_stats
        first = client.take_blob("Cam", "CCD1", t0)
        second = client.take_blob("Cam", "CCD1", t0)
        assert client.take_blob("Cam", "CCD1", t0) is None  # taken: not kept
        assert first.format == ".fits" and second.format == ".fits"  # .z inflated
        assert first.data == buf and second.data == buf
        assert len(client.blobs) == 0
        assert client.get("Cam", "CCD1").values["CCD1"] > 0
    finally:
        done.set()
        client.close()
    warned = [r.getMessage() for r in caplog.records if "skipped a BLOB" in r.getMessage()]
    assert len(warned) == 2, warned  # once for .jpg (two skipped), once for the short one
    assert all("\n" not in w for w in warned) and "'.jpg' is not FITS" in warned[0], warned


def io_fits(data: np.ndarray) -> bytes:
    out = io.BytesIO()
    fits.PrimaryHDU(data).writeto(out)
    return out.getvalue()


def test_command_line_photometry_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("ra,dec\n1,2\n")
    base = [sys.executable, "-m", "drivers.indi", "--device-id", DEVICE, "--site", "xl",
            "--group", "1", "--band", "g", "--indi-port", str(free_port()),
            "--connect-timeout", "1"]
    proc = subprocess.run([*base, "--photometry", "--reference", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.csv" in lines[0] and "lacks column" in lines[0], lines
    proc = subprocess.run([*base, "--pixel-scale", "1.0"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--pixel-scale need(s) --photometry" in lines[0], lines
    for extra, reason in ((["--frame-timeout", "30"], "--frame-timeout needs --photometry"),
                          (["--photometry", "--frame-timeout", "0"],
                           "--frame-timeout must be 1 to 3600 s, not 0")):
        proc = subprocess.run([*base, *extra], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 2, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], lines
