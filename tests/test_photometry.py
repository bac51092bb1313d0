"""Frames to detections (drivers/photometry, simulator/frames.py, brain photometry;
docs/photometry.md): completeness, magnitude bias and pulls, astrometry after WCS
refinement from a header off by about 1 arcmin, the zero point, the command line with
and without a reference, every bad frame as one line, and new or changed sources.
Frames are 1024 x 1024 (a few 512 x 512), seeded."""

from __future__ import annotations

import math
import signal

import numpy as np
import pytest
from astropy.io import fits
from conftest import run_brain
from scipy.spatial import cKDTree

from brain.cli import main as brain_main
from brain.config import load_config
from drivers.photometry import (
    BAD_FOR_CALIBRATION,
    FLAG_SATURATED,
    Catalogue,
    PhotometryError,
    build_reference,
    find_changes,
    match_sky,
    process_frame,
    read_frame,
)
from drivers.photometry.astrometry import header_wcs
from simulator.frames import FrameSpec, render_electrons, render_frame, star_field, write_frame

OFFSET = (48.0, -36.0)  # arcsec east, north: the header's pointing 60" off
ROTATION = 0.25  # deg


def _spec(**kw) -> FrameSpec:
    base = {"nx": 1024, "ny": 1024, "ra_deg": 150.0, "dec_deg": 30.0}
    return FrameSpec.for_band(load_config(), "r", **{**base, **kw})


FRAMES = {
    # the default array's r band (1.0" seeing at 1"/px: undersampled), Gaussian PSF
    "gaussian": dict(header_offset_arcsec=OFFSET, header_rotation_deg=ROTATION),
    # Xinglong-like seeing with Moffat wings
    "moffat": dict(psf="moffat", seeing_fwhm_arcsec=1.7, header_offset_arcsec=OFFSET,
                   header_rotation_deg=-ROTATION),
}


class Field:
    def __init__(self, name: str, seed: int):
        self.spec = _spec(**FRAMES[name])
        rng = np.random.default_rng(seed)
        ra, dec, mag = star_field(self.spec, 4000, rng, margin_px=40)
        bra, bdec, _m = star_field(self.spec, 8, rng)  # and 8 saturated stars
        self.ra, self.dec = np.append(ra, bra), np.append(dec, bdec)
        self.mag = np.append(mag, np.linspace(8.5, 11.0, 8))
        self.image, self.header = render_frame(self.spec, self.ra, self.dec, self.mag, rng)
        self.result = process_frame(self.image, self.header,
                                    reference=(self.ra, self.dec, self.mag))
        self.x, self.y = self.spec.true_wcs().wcs_world2pix(self.ra, self.dec, 0)
        self.limit = self.spec.aperture_limit(self.result.aperture_px)
        # each detection's nearest true star (within 1.5")
        r = self.result
        self.truth, self.sep = match_sky(r.ra_deg, r.dec_deg, self.ra, self.dec, 1.5)

    def isolated(self, fwhm_radius: float = 4.0) -> np.ndarray:
        """True stars with no other star within ``fwhm_radius`` FWHM brighter than
        their magnitude + 3 (unresolved blends are beyond aperture photometry)."""
        pairs = cKDTree(np.column_stack([self.x, self.y])).query_pairs(
            fwhm_radius * self.spec.fwhm_px, output_type="ndarray")
        alone = np.ones(self.ra.size, bool)
        a, b = pairs[:, 0], pairs[:, 1]
        alone[a[self.mag[b] < self.mag[a] + 3]] = False
        alone[b[self.mag[a] < self.mag[b] + 3]] = False
        return alone

    def inside(self, margin: float = 10.0) -> np.ndarray:
        s = self.spec
        return ((self.x > margin) & (self.y > margin) & (self.x < s.nx - 1 - margin)
                & (self.y < s.ny - 1 - margin))


@pytest.fixture(scope="module", params=sorted(FRAMES))
def field(request) -> Field:
    return Field(request.param, seed={"gaussian": 11, "moffat": 12}[request.param])


# The simulator's frames -------------------------------------------------------------
def test_frame_defaults_reach_the_configs_depth():
    cfg = load_config()
    for band in cfg.camera.bands:
        spec = FrameSpec.for_band(cfg, band)
        assert spec.psf_limit() == pytest.approx(cfg.depth.m5_zenith_dark[band], abs=1e-4)
        assert spec.exposure_s == cfg.survey.exposure_s
    spec = FrameSpec.for_band(cfg, "r", seeing_fwhm_arcsec=2.0)
    assert spec.psf_limit() == pytest.approx(20.6, abs=1e-4)  # the zero point follows
    assert FrameSpec.for_band(cfg, "r").with_(seeing_fwhm_arcsec=2.0).zp_e_per_s \
        == pytest.approx(spec.zp_e_per_s)


@pytest.mark.parametrize("psf", ["gaussian", "moffat"])
def test_rendered_flux_and_noise(psf):
    spec = FrameSpec(nx=128, ny=128, psf=psf, seeing_fwhm_arcsec=1.5)
    ra, dec = spec.true_wcs().wcs_pix2world([40.3, 90.7], [50.6, 80.2], 0)
    e = render_electrons(spec, ra, dec, [15.0, 16.0]) - spec.sky_e_per_px
    assert e.sum() == pytest.approx(float(spec.flux_e(15.0) + spec.flux_e(16.0)), rel=2e-3)
    img, h = render_frame(spec, [], [], [], np.random.default_rng(0))
    expect = math.sqrt(spec.sky_e_per_px + spec.read_noise_e ** 2) / spec.gain_e_per_adu
    assert float(img.std()) == pytest.approx(expect, rel=0.03)
    assert float(img.mean()) == pytest.approx(spec.bias_adu + spec.sky_e_per_px
                                              / spec.gain_e_per_adu, abs=0.2)
    assert h["MAGZP"] == pytest.approx(spec.magzp, abs=1e-4)
    assert {"GAIN", "EXPTIME", "SATURATE", "CRVAL1", "CD1_1"} <= set(h)


def test_header_wcs_is_off_as_asked():
    spec = _spec(header_offset_arcsec=OFFSET, header_rotation_deg=ROTATION)
    h = render_frame(spec, [], [], [], np.random.default_rng(0))[1]
    ra, dec = header_wcs(h).wcs_pix2world([511.5], [511.5], 0)
    sep = match_sky(ra, dec, [spec.ra_deg], [spec.dec_deg], 600)[1][0]
    assert sep == pytest.approx(math.hypot(*OFFSET), abs=0.5)


# The pipeline on rendered frames -----------------------------------------------------
def test_completeness_half_a_magnitude_above_the_limit(field):
    r = field.result
    assert abs(r.limiting_mag - field.limit) < 0.15  # the pipeline's own limit agrees
    found = np.zeros(field.ra.size, bool)
    found[field.truth[field.truth >= 0]] = True
    near = field.inside() & (np.abs(field.mag - (field.limit - 0.5)) < 0.15)
    assert near.sum() >= 80
    assert found[near].mean() >= 0.90, (found[near].mean(), near.sum())
    # ... and nearly nothing of what is found is noise
    assert (field.truth < 0).mean() < 0.02


def _clean_pairs(field, lo: float, hi: float):
    r = field.result
    t = np.where(field.truth >= 0, field.truth, 0)
    ok = ((field.truth >= 0) & ((r.flags & BAD_FOR_CALIBRATION) == 0)
          & field.isolated()[t] & (field.mag[t] > lo) & (field.mag[t] < hi))
    return ok, t


def test_magnitude_bias_and_pulls_two_magnitudes_above_the_limit(field):
    r = field.result
    ok, t = _clean_pairs(field, field.limit - 2.5, field.limit - 1.5)
    assert ok.sum() >= 80
    d = r.mag[ok] - field.mag[t[ok]]
    pull = d / r.mag_err[ok]
    assert abs(float(np.median(d))) <= 0.03
    width = 1.4826 * float(np.median(np.abs(pull - np.median(pull))))
    assert 0.8 <= width <= 1.2, width
    # the zero point is the true one (the header's MAGZP, which refinement never reads)
    assert r.zero_point.source == "reference" and r.zero_point.n >= 50
    assert abs(r.zero_point.value - field.spec.magzp) < 0.02
    assert r.zero_point.err < 0.01


def test_astrometry_after_refining_a_header_one_arcmin_off(field):
    r = field.result
    assert r.wcs_refined and r.wcs_matches >= 100
    assert abs(r.wcs_shift_arcsec - math.hypot(*OFFSET)) < 1.0
    assert abs(abs(r.wcs_rotation_deg) - ROTATION) < 0.02
    ok, t = _clean_pairs(field, 0, 99)
    ok &= r.snr >= 20
    assert ok.sum() >= 100
    err = match_sky(r.ra_deg[ok], r.dec_deg[ok], field.ra[t[ok]], field.dec[t[ok]], 5)[1]
    assert math.sqrt(float(np.mean(err ** 2))) <= 0.3
    # the header alone puts the same stars a minute of arc away
    hra, hdec = header_wcs(field.header).wcs_pix2world(r.x[ok], r.y[ok], 0)
    herr = match_sky(hra, hdec, field.ra[t[ok]], field.dec[t[ok]], 600)[1]
    assert float(np.median(herr)) > 30


def test_saturated_stars_are_flagged(field):
    r, s = field.result, field.spec
    # each star's brightest pixel without noise or clipping, in ADU
    adu = render_electrons(s, field.ra, field.dec, field.mag) / s.gain_e_per_adu + s.bias_adu
    ix = np.clip(np.rint(field.x).astype(int), 0, s.nx - 1)
    iy = np.clip(np.rint(field.y).astype(int), 0, s.ny - 1)
    peak = np.max([adu[np.clip(iy + dy, 0, s.ny - 1), np.clip(ix + dx, 0, s.nx - 1)]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    found = field.truth >= 0
    t = field.truth[found]
    sat = (r.flags[found] & FLAG_SATURATED) != 0
    over = peak[t] >= 1.05 * s.saturate_adu
    assert over.sum() >= 6
    assert sat[over].all()
    under = peak[t] < 0.5 * s.saturate_adu
    assert sat[under].mean() < 0.02  # only faint neighbours of saturated stars


def test_header_magzp_without_reference():
    spec = _spec(nx=512, ny=512)
    rng = np.random.default_rng(21)
    ra, dec, mag = star_field(spec, 1500, rng)
    img, h = render_frame(spec, ra, dec, mag, rng)
    r = process_frame(img, h)
    assert r.zero_point.source == "header MAGZP" and not r.wcs_refined
    j, sep = match_sky(r.ra_deg, r.dec_deg, ra, dec, 1.5)
    good = (j >= 0) & (r.snr > 20) & ((r.flags & BAD_FOR_CALIBRATION) == 0)
    assert good.sum() > 50
    assert abs(float(np.median(r.mag[good] - mag[j[good]]))) < 0.03  # the aperture correction
    assert float(np.median(sep[good])) < 0.3
    assert len(r.sources()) == int(((r.flags & BAD_FOR_CALIBRATION) == 0).sum())
    assert set(r.sources()[0]) == {"ra_deg", "dec_deg", "mag", "mag_err"}


def test_nan_pixels_are_masked_not_fatal():
    spec = _spec(nx=512, ny=512)
    rng = np.random.default_rng(22)
    ra, dec, mag = star_field(spec, 1500, rng)
    img, h = render_frame(spec, ra, dec, mag, rng)
    img[100:140, 200:260] = np.nan
    img[rng.integers(0, 512, 300), rng.integers(0, 512, 300)] = np.nan
    r = process_frame(img, h)
    assert len(r) > 100
    assert np.isfinite(r.mag).all() and np.isfinite(r.mag_err).all()
    inside = (r.x > 195) & (r.x < 265) & (r.y > 95) & (r.y < 145)
    assert ((r.flags[inside] & 32) != 0).all()  # sep APER_HASMASKED


def test_too_few_matches_and_no_wcs_raise():
    spec = _spec(nx=512, ny=512)
    rng = np.random.default_rng(23)
    ra, dec, mag = star_field(spec, 800, rng)
    img, h = render_frame(spec, ra, dec, mag, rng)
    with pytest.raises(PhotometryError, match=r"too few reference matches"):
        process_frame(img, h, reference=(ra[:5], dec[:5], mag[:5]))
    elsewhere = ((ra + 3.0) % 360, dec, mag)  # a catalogue of another field
    with pytest.raises(PhotometryError, match=r"too few reference matches"):
        process_frame(img, h, reference=elsewhere)
    del h["CTYPE1"]
    with pytest.raises(PhotometryError, match=r"no WCS in the header \(missing CTYPE1\)"):
        process_frame(img, h)


def test_a_header_off_beyond_the_search_is_refused_not_misfitted():
    spec = _spec(header_offset_arcsec=(250.0, 200.0))  # 320", the search is 120"
    rng = np.random.default_rng(24)
    ra, dec, mag = star_field(spec, 4000, rng, margin_px=150)
    img, h = render_frame(spec, ra, dec, mag, rng)
    bright = mag < 19
    with pytest.raises(PhotometryError, match=r"too few reference matches"):
        process_frame(img, h, reference=(ra[bright], dec[bright], mag[bright]))


# The command line -------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("phot")
    spec = _spec(nx=512, ny=512, header_offset_arcsec=(40.0, 45.0), header_rotation_deg=0.2)
    rng = np.random.default_rng(31)
    ra, dec, mag = star_field(spec, 1500, rng, margin_px=60)
    img, h = render_frame(spec, ra, dec, mag, rng)
    write_frame(d / "frame.fits", img, h)
    bright = mag < spec.psf_limit() - 1
    rows = "".join(f"{a:.8f},{b:.8f},{m:.4f}\n" for a, b, m in
                   zip(ra[bright], dec[bright], mag[bright], strict=True))
    (d / "ref.csv").write_text("ra_deg,dec_deg,mag\n" + rows)
    return d, spec, img, h, (ra, dec, mag)


def _read_csv(text: str) -> np.ndarray:
    lines = text.strip().splitlines()
    assert lines[0] == "ra_deg,dec_deg,mag,mag_err,snr,flags"
    return np.array([[float(v) for v in line.split(",")] for line in lines[1:]])


def test_cli_with_reference_writes_the_csv(frame_files):
    d, _spec, _img, _h, (ra, dec, mag) = frame_files
    out = d / "with_ref.csv"
    proc = run_brain("photometry", str(d / "frame.fits"), "--reference", str(d / "ref.csv"),
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "sources ->" in proc.stderr and "Traceback" not in proc.stderr
    rows = _read_csv(out.read_text())
    assert len(rows) > 100 and (rows[:, 4] >= 5).all()
    j, sep = match_sky(rows[:, 0], rows[:, 1], ra, dec, 1.0)
    good = (j >= 0) & (rows[:, 4] > 20) & (rows[:, 5] == 0)
    assert good.sum() > 50 and float(np.median(sep[good])) < 0.3
    assert abs(float(np.median(rows[good, 2] - mag[j[good]]))) < 0.03


def test_cli_header_magzp_to_stdout(frame_files):
    d, spec, img, h, (ra, dec, mag) = frame_files
    h = h.copy()
    h.extend(spec.true_wcs().to_header(), update=True)  # a right WCS this time
    write_frame(d / "good_wcs.fits", img, h)
    proc = run_brain("photometry", str(d / "good_wcs.fits"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "MAGZP" in lines[0], proc.stderr
    rows = _read_csv(proc.stdout)
    j, _sep = match_sky(rows[:, 0], rows[:, 1], ra, dec, 1.0)
    good = (j >= 0) & (rows[:, 4] > 20) & (rows[:, 5] == 0)
    assert good.sum() > 50
    assert abs(float(np.median(rows[good, 2] - mag[j[good]]))) < 0.03


def _bad_frames(d, spec, img, h):
    """name -> (frame path, extra args, a word the one-line error must hold)."""
    cases = {}
    cases["missing"] = (d / "nope.fits", [], "not found")
    (d / "text.fits").write_text("ra_deg,dec_deg\n1,2\n")
    cases["not_fits"] = (d / "text.fits", [], "not a readable FITS file")
    fits.PrimaryHDU(header=h).writeto(d / "empty.fits", overwrite=True)
    cases["empty"] = (d / "empty.fits", [], "empty frame")
    write_frame(d / "nan.fits", np.full_like(img, np.nan), h)
    cases["all_nan"] = (d / "nan.fits", [], "no finite pixels")
    write_frame(d / "sat.fits", np.full_like(img, h["SATURATE"]), h)
    cases["saturated"] = (d / "sat.fits", [], "saturated")
    nowcs = h.copy()
    for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2",
              "CD2_1", "CD2_2"):
        nowcs.remove(k, ignore_missing=True)
    write_frame(d / "nowcs.fits", img, nowcs)
    cases["no_wcs"] = (d / "nowcs.fits", [], "no WCS")
    nozp = h.copy()
    del nozp["MAGZP"]
    write_frame(d / "nozp.fits", img, nozp)
    cases["no_magzp"] = (d / "nozp.fits", [], "MAGZP")
    write_frame(d / "flat.fits", np.full_like(img, 500.0), h)
    cases["constant"] = (d / "flat.fits", [], "no noise")
    (d / "ref_cols.csv").write_text("ra,dec,mag\n150,30,15\n")
    cases["ref_columns"] = (d / "frame.fits", ["--reference", str(d / "ref_cols.csv")],
                            "lacks column")
    (d / "ref_text.csv").write_text("ra_deg,dec_deg,mag\n150,30,bright\n")
    cases["ref_value"] = (d / "frame.fits", ["--reference", str(d / "ref_text.csv")],
                          "line 2")
    (d / "ref_few.csv").write_text("ra_deg,dec_deg,mag\n150.0,30.0,15\n150.01,30.0,16\n")
    cases["ref_few"] = (d / "frame.fits", ["--reference", str(d / "ref_few.csv")],
                        "too few reference matches")
    return cases


@pytest.fixture
def keep_sigterm():
    before = signal.getsignal(signal.SIGTERM)  # main() sets its own for batch commands
    yield
    signal.signal(signal.SIGTERM, before)


def test_cli_bad_frames_one_line_each(frame_files, capsys, keep_sigterm):
    d, spec, img, h, _truth = frame_files
    cases = _bad_frames(d, spec, img, h)
    for name, (path, extra, needle) in cases.items():
        out = d / f"out_{name}.csv"
        capsys.readouterr()
        rc = brain_main(["photometry", str(path), *extra, "--out", str(out)])
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        assert rc == 2, (name, cap.err)
        assert len(lines) == 1 and lines[0].startswith("brain photometry: error: "), \
            (name, cap.err)
        assert needle in lines[0], (name, lines[0])
        assert cap.out == "" and not out.exists(), name


def test_cli_bad_frame_in_a_process(frame_files):
    d, _spec, img, h, _truth = frame_files
    write_frame(d / "nan2.fits", np.full_like(img, np.nan), h)
    proc = run_brain("photometry", str(d / "nan2.fits"), "--out", str(d / "x.csv"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("brain photometry: error: ") and proc.stdout == ""
    assert not (d / "x.csv").exists()


def test_read_frame_takes_an_image_extension_and_the_primary_keywords(frame_files):
    d, _spec, img, h, _truth = frame_files
    prim = fits.PrimaryHDU()
    prim.header["GAIN"] = 2.5
    ext_h = h.copy()
    del ext_h["GAIN"]
    fits.HDUList([prim, fits.ImageHDU(img, ext_h)]).writeto(d / "ext.fits", overwrite=True)
    data, header = read_frame(d / "ext.fits")
    assert data.shape == img.shape and header["GAIN"] == 2.5 and "CRVAL1" in header


# New and changed sources ------------------------------------------------------------
def test_new_and_changed_sources_against_earlier_frames():
    spec = _spec(nx=512, ny=512)
    rng = np.random.default_rng(41)
    ra, dec, mag = star_field(spec, 600, rng, mag_faint=spec.psf_limit() + 0.5)
    epochs = []
    for seed in (1, 2):
        img, h = render_frame(spec, ra, dec, mag, np.random.default_rng(seed))
        r = process_frame(img, h)
        epochs.append(Catalogue(r.ra_deg, r.dec_deg, r.mag, r.mag_err))
    reference = build_reference(epochs, radius_arcsec=1.5)
    assert reference.n.max() == 2 and (reference.n == 2).sum() > 0.8 * len(epochs[0].mag)
    # tonight: one star 1 mag brighter, one new source at 17 mag
    mid = (mag > 16) & (mag < 17) & (np.abs(ra - spec.ra_deg) < 0.05)
    k = int(np.flatnonzero(mid)[0])
    mag2 = mag.copy()
    mag2[k] -= 1.0
    new_ra, new_dec = spec.true_wcs().wcs_pix2world([300.3], [200.7], 0)
    img, h = render_frame(spec, np.append(ra, new_ra), np.append(dec, new_dec),
                          np.append(mag2, 17.0), np.random.default_rng(3))
    r = process_frame(img, h)
    tonight = Catalogue(r.ra_deg, r.dec_deg, r.mag, r.mag_err)
    ch = find_changes(tonight, reference, radius_arcsec=1.5, k=5.0)
    new_hit = match_sky(new_ra, new_dec, r.ra_deg[ch.new], r.dec_deg[ch.new], 1.0)[0]
    assert new_hit[0] >= 0  # the new source is reported new
    var_hit = match_sky(ra[k:k + 1], dec[k:k + 1], r.ra_deg[ch.changed],
                        r.dec_deg[ch.changed], 1.0)[0]
    assert var_hit[0] >= 0  # the brightened star is reported changed ...
    i = ch.changed[var_hit[0]]
    assert ch.delta_mag[i] == pytest.approx(-1.0, abs=0.1)
    # ... and (almost) nothing else: bright false alarms would be a bug
    bright_new = ch.new[r.snr[ch.new] > 20]
    assert len(bright_new) == 1, r.mag[bright_new]
    assert len(ch.changed) <= 3, ch.delta_mag[ch.changed]


def test_find_changes_on_catalogues():
    ref = Catalogue([10.0, 10.001, 20.0], [0.0, 0.0, 5.0], [15.0, 18.0, 16.0],
                    [0.01, 0.05, 0.02])
    det = Catalogue([10.0 + 0.5 / 3600, 10.001, 20.0, 30.0], [0.0, 0.0, 5.0, 1.0],
                    [15.02, 18.5, 16.0, 19.0], [0.01, 0.05, 0.02, 0.1])
    ch = find_changes(det, ref, radius_arcsec=1.0, k=5.0)
    assert ch.new.tolist() == [3]
    assert ch.changed.tolist() == [1]  # 0.5 mag at 7 sigma; 0.02 mag at 0.9 sigma
    assert ch.ref_index.tolist() == [0, 1, 2, -1]
    merged = build_reference([ref, det], radius_arcsec=1.0)
    assert merged.n.tolist() == [2, 2, 2, 1]
    assert merged.mag[0] == pytest.approx(15.01)
