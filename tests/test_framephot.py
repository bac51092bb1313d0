"""drivers/framephot.py: what a bridge's frames become (docs/photometry.md, "Frames from
a bridge"): steady stars are not sent, a field's own reference freezes after its first
frames, and a dead worker does not stop the photometry."""

import os
import signal

import numpy as np
import pytest

from drivers.framephot import (
    HISTORY_EPOCHS,
    FieldHistory,
    FrameMeta,
    FrameReducer,
    StarCatalogue,
    reduce_frame,
)
from simulator.frames import FrameSpec, render_frame, star_field

SPEC = FrameSpec(ra_deg=150.0, dec_deg=30.0, nx=768, ny=768, m5=20.5, exposure_s=60,
                 band="r", header_offset_arcsec=(25.0, -15.0), header_rotation_deg=0.1)


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    rng = np.random.default_rng(11)
    ra, dec, mag = star_field(SPEC, 400, rng, 13.0, 21.5, margin_px=8)
    path = tmp_path_factory.mktemp("cat") / "stars.csv"
    bright = mag < 19.0
    path.write_text("ra_deg,dec_deg,mag\n" + "".join(
        f"{a:.8f},{d:.8f},{m:.4f}\n" for a, d, m in zip(ra[bright], dec[bright], mag[bright],
                                                  strict=True)))
    return ra, dec, mag, path


def frame(sky, seed, extra=()):
    """A frame of the stars plus ``extra`` (x, y, mag) sources."""
    ra, dec, mag, _ = sky
    if extra:
        x, y, m = np.array(extra, float).T
        era, edec = SPEC.true_wcs().wcs_pix2world(x, y, 0)
        ra, dec, mag = np.r_[ra, era], np.r_[dec, edec], np.r_[mag, m]
    return render_frame(SPEC, ra, dec, mag, np.random.default_rng(seed))


def near(sources, ra, dec, arcsec=1.0):
    return [s for s in sources if abs(s["dec_deg"] - dec) * 3600 < arcsec
            and abs(s["ra_deg"] - ra) * 3600 * np.cos(np.radians(dec)) < arcsec]


def meta(k):
    return FrameMeta(f"o{k}", 42, "r", 1.9e9 + k, 20.0)


def test_steady_stars_not_sent_and_field_reference_freezes(sky, tmp_path):
    stars = StarCatalogue.read(sky[3])
    hist = FieldHistory(tmp_path / "h")
    new_xy = (300.0, 420.0)
    (ra_t,), (dec_t,) = SPEC.true_wcs().wcs_pix2world([new_xy[0]], [new_xy[1]], 0)
    first = reduce_frame(*frame(sky, 1), meta(1), stars, hist)
    # Nothing brighter than the calibration catalogue's depth is sent: those are its stars.
    assert not [s for s in first["sources"] if s["mag"] < 18.5]
    assert all("ref_mag" in s for s in first["sources"])
    faint_first = len(first["sources"])
    assert faint_first > 0  # stars fainter than the catalogue: new against it
    for k in range(2, HISTORY_EPOCHS + 1):
        reduce_frame(*frame(sky, k), meta(k), stars, hist)
    # Now the field's own reference holds the faint stars: they are no longer sent.
    later = reduce_frame(*frame(sky, 9, [(*new_xy, 17.5)]), meta(9), stars, hist)
    assert len(later["sources"]) < faint_first / 3
    got = near(later["sources"], ra_t, dec_t)
    assert len(got) == 1 and abs(got[0]["mag"] - 17.5) < 0.1 and got[0]["ref_mag"] is None
    # Frozen: the frame with the transient did not enter the reference.
    with np.load(tmp_path / "h" / "r" / "42.npz") as z:
        assert int(z["epoch"].max()) == HISTORY_EPOCHS - 1
    again = reduce_frame(*frame(sky, 10, [(*new_xy, 17.5)]), meta(10), stars, hist)
    assert len(near(again["sources"], ra_t, dec_t)) == 1


def test_without_any_reference_no_ref_mag(sky):
    data, header = frame(sky, 3)
    header["MAGZP"] = 25.0
    body = reduce_frame(data, header, meta(3), None, None)
    assert body["sources"] and not any("ref_mag" in s for s in body["sources"])


def test_dead_worker_is_replaced_between_frames(sky):
    red = FrameReducer(sky[3], None)
    try:
        os.kill(red.worker_pid(), signal.SIGKILL)
        data, header = frame(sky, 4, [(200.0, 200.0, 17.0)])
        red.submit(meta(4), data, header)
        events = red.drain(120)
        if not events:  # the death was noticed at the first frame: it is lost, the next works
            assert red.stats["failed"] == 1
            red.submit(meta(5), data, header)
            events = red.drain(120)
        assert [e[0] for e in events] == ["detections"]
        assert events[0][1]["parts"] == 1 and events[0][1]["sources"]
    finally:
        red.close()


def test_bounded_queue_drops_newest(sky):
    red = FrameReducer(None, None, max_pending=1)
    try:
        data, header = frame(sky, 5)
        header["MAGZP"] = 25.0
        assert red.submit(meta(6), data, header)
        assert not red.submit(meta(7), data, header)
        assert red.stats["dropped"] == 1 and "dropped" in red.last_note
        assert [e[1]["obs_id"] for e in red.drain(120)] == ["o6"]
    finally:
        red.close()


def test_an_unforeseen_failure_is_one_frame_lost_not_the_bridge(sky, tmp_path):
    """A frame whose history cannot be written (or any error the pipeline did not
    foresee) is that frame's one-line reason; the next frame is measured."""
    blocked = tmp_path / "h"
    blocked.mkdir()
    (blocked / "r").write_text("a file where the band's folder should be")
    red = FrameReducer(sky[3], blocked)
    try:
        data, header = frame(sky, 6)
        red.submit(meta(11), data, header)
        assert red.drain(120) == []
        assert red.stats["failed"] == 1 and red.last_note.startswith("o11: ")
        assert "\n" not in red.last_note and "Traceback" not in red.last_note
        # The same worker goes on: a frame of another band (its folder is fine).
        red.submit(FrameMeta("o12", 42, "g", 1.9e9 + 12, 20.0), data, header)
        assert [e[1]["obs_id"] for e in red.drain(120)] == ["o12"]
    finally:
        red.close()
