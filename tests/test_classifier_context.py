"""The classifier's inputs beyond our own features: the field's light-curve library and
the sky context (positions), and `brain classify` with and without position columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import light_curve as licu
import numpy as np
import pytest

from brain.ops.hosting import check_radec
from observatory.taxonomy import TRANSIENTS
from policies.classifier import TransientClassifier, model_feature_names, model_features
from policies.context import CONTEXT_NAMES, context_features
from policies.lc_features import BAZIN_MIN, extract_lc, lc_feature_names
from policies.lightcurve_io import LightCurveInputError, read_detections_csv
from policies.lightcurve_sets import make_set

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def curves():
    return make_set(12, seed=4242)


def _one(d, k, b):
    sel = (d.obj == k) & (d.band == b)
    return d.mjd[sel], d.mag[sel], np.maximum(d.err[sel], 0.005)


def test_library_features_agree_with_light_curve_itself(curves):
    """The batched extraction gives, object by object, what the library's own extractors
    give for that object's light curve alone: the fits batched through the library, the
    variability indices computed for all objects at once in numpy (same definitions)."""
    d = curves
    got = extract_lc(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    names = lc_feature_names()
    stetson = licu.StetsonK()
    spread = licu.Extractor(licu.Kurtosis(), licu.InterPercentileRange(0.1),
                            licu.StandardDeviation())
    bazin = licu.BazinFit("lmsder")
    checked = {"stetson": 0, "bazin": 0}
    for k in range(d.n):
        t, m, e = _one(d, k, 1)
        if t.size >= 4:
            assert got[k, names.index("r_stetson_k")] == pytest.approx(stetson(t, m, e),
                                                                         rel=1e-9)
            kurt, ipr, std = spread(t, m, e)
            assert got[k, names.index("r_kurtosis")] == pytest.approx(kurt, rel=1e-5)
            assert got[k, names.index("r_ipr_over_std")] == pytest.approx(ipr / std, rel=1e-5)
            checked["stetson"] += 1
        if t.size >= BAZIN_MIN and t.max() - t.min() >= 1.0:
            f = 10 ** (-0.4 * (m - m.min()))
            fit = bazin(t, f, f * e / 1.0857)
            assert got[k, names.index("r_bazin_log_fall")] == pytest.approx(
                np.log10(np.clip(fit[4], 1e-3, 1e4)), rel=1e-6, abs=1e-9)
            checked["bazin"] += 1
        elif t.size < BAZIN_MIN:
            assert np.isnan(got[k, names.index("r_bazin_log_rise")])
    assert checked["stetson"] >= 20 and checked["bazin"] >= 10


def test_library_features_are_per_object_independent(curves):
    d = curves
    full = extract_lc(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    sel = d.obj == 7
    alone = extract_lc(np.zeros(sel.sum(), int), d.mjd[sel], d.band[sel], d.mag[sel],
                       d.err[sel], 1)
    np.testing.assert_allclose(alone[0], full[7], equal_nan=True, rtol=1e-9)


def test_periodogram_finds_a_periodic_variables_period():
    """A 0.37-day sinusoid sampled over 20 nights: the periodogram's best period."""
    rng = np.random.default_rng(3)
    t = np.sort(np.concatenate([n + rng.uniform(0, 0.3, 12) for n in range(20)]))
    m = 18 + 0.3 * np.sin(2 * np.pi * t / 0.37) + rng.normal(0, 0.01, t.size)
    out = extract_lc(np.zeros(t.size, int), t, np.ones(t.size, int), m,
                     np.full(t.size, 0.01), 1)
    period = 10 ** out[0, lc_feature_names().index("log_period")]
    assert period == pytest.approx(0.37, rel=0.02)


def test_context_features_from_positions():
    # The Galactic centre (RA 266.405, Dec -28.936), the north Galactic pole, none.
    radec = np.array([[266.40499, -28.93617], [192.85948, 27.12825], [np.nan, np.nan]])
    c = context_features(radec, 3)
    assert c.shape == (3, len(CONTEXT_NAMES))
    assert c[0, :2] == pytest.approx([0.0, 0.0], abs=1e-3)
    assert c[1, :2] == pytest.approx([90.0, 90.0], abs=1e-3)
    assert np.isnan(c[2]).all()
    assert np.isnan(context_features(None, 2)).all()


def test_a_position_changes_the_answer_only_where_given(curves):
    """The same light curves with and without positions: objects given none are
    classified exactly as without the column; a microlensing-like light curve in the
    bulge is more likely microlensing than the same light curve at the Galactic pole."""
    model = TransientClassifier.load()
    d = curves
    radec = np.full((d.n, 2), np.nan)
    radec[: d.n // 2] = [266.4, -28.9]
    p0 = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    p1 = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n, radec)
    np.testing.assert_array_equal(p0[d.n // 2:], p1[d.n // 2:])
    assert not np.allclose(p0[: d.n // 2], p1[: d.n // 2])
    ulens = model.classes.index("uLens")
    lens = np.flatnonzero(d.label == ulens)
    bulge = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n,
                          np.tile([266.4, -28.9], (d.n, 1)))
    pole = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n,
                         np.tile([192.86, 27.13], (d.n, 1)))
    assert np.mean(bulge[lens, ulens]) > np.mean(pole[lens, ulens])
    assert model_features(d.obj, d.mjd, d.band, d.mag, d.err, d.n).shape[1] == len(
        model_feature_names())


def test_a_reference_changes_the_answer_only_where_given(curves):
    """Objects whose reference is unknown are classified exactly as without one; a
    variable star's light curve is more likely a variable with its star in the reference
    than with nothing there."""
    model = TransientClassifier.load()
    d = curves
    half = d.n // 2
    ref = np.full((d.n, 3), np.nan)
    ref[:half] = np.inf
    p0 = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    p1 = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n, None, ref)
    np.testing.assert_array_equal(p0[half:], p1[half:])
    assert not np.allclose(p0[:half], p1[:half])
    names = np.asarray(model.classes)
    variable = ~np.isin(names, TRANSIENTS)
    star = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n, None, d.base)
    nothing = model.predict(d.obj, d.mjd, d.band, d.mag, d.err, d.n, None,
                            np.full((d.n, 3), np.inf))
    rows = variable[d.label]
    assert (star[rows][:, variable].sum(axis=1).mean()
            > nothing[rows][:, variable].sum(axis=1).mean() + 0.1)


def test_positions_in_a_request_are_checked():
    assert np.isnan(check_radec(None, 3)).all()
    with pytest.raises(ValueError, match="shape"):
        check_radec(np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="both"):
        check_radec(np.array([[10.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="ra_deg"):
        check_radec(np.array([[400.0, 0.0]]), 1)


def _csv(tmp_path, header, rows, name="lc.csv"):
    p = tmp_path / name
    p.write_text("\n".join([header, *rows]) + "\n")
    return p


def test_reading_optional_position_columns(tmp_path):
    p = _csv(tmp_path, "object_id,mjd,band,mag,mag_err,ra_deg,dec_deg",
             ["a,60000,r,19,0.05,359.9999,10", "a,60000.1,r,19.1,0.05,0.0001,10",
              "b,60000,g,18,0.05,,"])
    t = read_detections_csv(p)
    assert t.object_ids == ["a", "b"]
    assert t.radec[0, 1] == pytest.approx(10.0)
    assert min(t.radec[0, 0], 360 - t.radec[0, 0]) < 1e-6  # the mean across RA 0
    assert np.isnan(t.radec[1]).all()
    assert read_detections_csv(_csv(tmp_path, "object_id,mjd,band,mag,mag_err",
                                    ["a,60000,r,19,0.05"])).radec is None
    for header, row, needle in (
            ("object_id,mjd,band,mag,mag_err,ra_deg", "a,60000,r,19,0.05,10", "both"),
            ("object_id,mjd,band,mag,mag_err,ra_deg,dec_deg", "a,60000,r,19,0.05,10,",
             "both"),
            ("object_id,mjd,band,mag,mag_err,ra_deg,dec_deg", "a,60000,r,19,0.05,10,95",
             "dec_deg"),
            ("object_id,mjd,band,mag,mag_err,ra_deg,dec_deg", "a,60000,r,19,0.05,x,5",
             "ra_deg")):
        with pytest.raises(LightCurveInputError, match=needle):
            read_detections_csv(_csv(tmp_path, header, [row]))


def test_brain_classify_with_and_without_positions(tmp_path):
    """Five contract columns alone, with positions, and with the reference column: each
    gives every class; a position in the bulge, or nothing in the reference, changes the
    answer."""
    rows = []
    for k in range(30):
        mag = 19.5 - 1.5 / np.sqrt(1 + ((k - 15) / 4.0) ** 2)  # a smooth, symmetric rise
        rows += [f"ev1,{60000 + k + 0.02 * j},{b},{mag:.3f},0.03" for j, b in enumerate("gri")]
    plain = _csv(tmp_path, "object_id,mjd,band,mag,mag_err", rows)
    out = {}
    for name, path in (("plain", plain),
                       ("bulge", _csv(tmp_path, "object_id,mjd,band,mag,mag_err,ra_deg,dec_deg",
                                      [r + ",266.4,-28.9" for r in rows], "bulge.csv")),
                       ("reference", _csv(tmp_path, "object_id,mjd,band,mag,mag_err,ref_mag",
                                          [r + ",none" for r in rows], "ref.csv"))):
        r = subprocess.run([sys.executable, "-m", "brain", "classify", str(path)], cwd=REPO,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        out[name] = json.loads(r.stdout)["ev1"]
        assert abs(sum(out[name]["probabilities"].values()) - 1) < 1e-9
    assert out["plain"]["probabilities"] != out["bulge"]["probabilities"]
    assert out["plain"]["probabilities"] != out["reference"]["probabilities"]
