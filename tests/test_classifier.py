"""The shipped classifier: output contract, calibration, robustness, reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from observatory.taxonomy import CLASSES
from policies.classifier import TransientClassifier, model_features
from policies.classifier_training import expected_calibration_error, train
from policies.features import extract, feature_names
from policies.lightcurve_sets import make_set

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return TransientClassifier.load()


@pytest.fixture(scope="module")
def held_out():
    return make_set(150, seed=777)  # a seed never used in training (1, 2, 3)


def test_probabilities_are_a_distribution_over_the_taxonomy(model, held_out):
    p = model.predict(held_out.obj, held_out.mjd, held_out.band, held_out.mag, held_out.err,
                      held_out.n)
    assert p.shape == (held_out.n, len(CLASSES))
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_better_than_chance_and_calibrated(model, held_out):
    """Held-out accuracy far above 1/14, and the expected calibration error small."""
    p = model.predict(held_out.obj, held_out.mjd, held_out.band, held_out.mag, held_out.err,
                      held_out.n)
    acc = np.mean(p.argmax(axis=1) == held_out.label)
    assert acc > 0.5
    assert expected_calibration_error(p, held_out.label) < 0.06


def test_missing_bands_and_tiny_light_curves_still_classify(model):
    """r-band only, one-point and three-point light curves give valid distributions."""
    obj = np.array([0, 0, 0, 1, 2, 2, 2])
    mjd = np.array([60000.0, 60000.02, 60000.04, 60000.0, 60000.0, 60003.0, 60010.0])
    band = np.array([1, 1, 1, 0, 2, 2, 2])
    mag = np.array([19.0, 19.1, 19.05, 20.0, 18.0, 18.5, 19.5])
    err = np.full(7, 0.05)
    p = model.predict(obj, mjd, band, mag, err, 3)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_features_are_per_object_independent():
    """An object's features do not depend on which other objects share the batch."""
    d = make_set(20, seed=99)
    full = extract(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    sel = d.obj == 5
    alone = extract(np.zeros(sel.sum(), int), d.mjd[sel], d.band[sel], d.mag[sel], d.err[sel], 1)
    np.testing.assert_allclose(alone[0], full[5], equal_nan=True)
    assert full.shape[1] == len(feature_names())


def test_training_is_reproducible(tmp_path):
    """The same seeds give the same model: `brain train classifier` reproduces the
    shipped artifact (checked here at a small size)."""
    m1, r1 = train(n_per_class=150, rounds=30, out_dir=tmp_path / "a")
    m2, r2 = train(n_per_class=150, rounds=30, out_dir=tmp_path / "b")
    d = make_set(30, seed=5)
    f = model_features(d.obj, d.mjd, d.band, d.mag, d.err, d.n)
    np.testing.assert_array_equal(m1.predict_features(f), m2.predict_features(f))
    assert r1["test"]["full"]["macro_f1"] == r2["test"]["full"]["macro_f1"]
    assert (tmp_path / "a" / "model.txt").read_text() == (tmp_path / "b" / "model.txt").read_text()


def test_brain_classify_json_contract(tmp_path):
    rows = ["object_id,mjd,band,mag,mag_err"]
    for k in range(8):
        rows += [f"sn1,{60000 + 2 * k},{b},{19 + 0.1 * k},0.04" for b in "gri"]
    rows += ["star7,60000.0,r,17.2,0.02", "star7,60000.5,r,17.9,0.02"]
    (tmp_path / "lc.csv").write_text("\n".join(rows) + "\n")
    r = subprocess.run([sys.executable, "-m", "brain", "classify", str(tmp_path / "lc.csv"),
                        "--out", str(tmp_path / "out.json")], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert set(out) == {"sn1", "star7"}
    for v in out.values():
        assert set(v["probabilities"]) == set(CLASSES)
        assert abs(sum(v["probabilities"].values()) - 1) < 1e-9
        assert v["class"] == max(v["probabilities"], key=v["probabilities"].get)


def test_sitian_held_out_set_is_balanced_and_first_nights_hold_the_outburst():
    """The set the targets are measured on: every class equally represented, and a
    transient's first-night light curve is the night its outburst was first seen, not a
    night of its quiescent counterpart (for flares, CVs and microlensing the counterpart
    may be visible for weeks before)."""

    d = make_set(40, seed=4321, first_night_fraction=1.0, survey="sitian")
    assert np.bincount(d.label, minlength=len(CLASSES)).tolist() == [40] * len(CLASSES)
    assert d.first_night.all()
    span = np.zeros(d.n)
    np.maximum.at(span, d.obj, d.mjd)
    t0 = np.full(d.n, np.inf)
    np.minimum.at(t0, d.obj, d.mjd)
    assert np.all(span - t0 < 1.1)  # one night each
    # Flares: the outburst is in the light curve, so its amplitude is large.
    flare = CLASSES.index("Flare")
    amp = np.zeros(d.n)
    lo = np.full(d.n, np.inf)
    np.minimum.at(lo, d.obj, d.mag)
    np.maximum.at(amp, d.obj, d.mag)
    amp -= lo
    assert np.median(amp[d.label == flare]) > 0.3


def test_early_light_curves_keep_their_first_nights_only():
    """``early_fraction`` (experiments/early_candidates.py): light curves cut to the first
    2-4 nights of the outburst, as a season's new candidates are seen; without it the
    sets are exactly the shipped ones."""
    d = make_set(20, seed=4322, first_night_fraction=0.0, survey="sitian",
                 early_fraction=1.0)
    full = make_set(20, seed=4322, first_night_fraction=0.0, survey="sitian")
    again = make_set(20, seed=4322, first_night_fraction=0.0, survey="sitian",
                     early_fraction=0.0)
    assert np.array_equal(full.mjd, again.mjd) and np.array_equal(full.mag, again.mag)

    def spans(s):
        hi = np.full(s.n, -np.inf)
        np.maximum.at(hi, s.obj, s.mjd)
        lo = np.full(s.n, np.inf)
        np.minimum.at(lo, s.obj, s.mjd)
        return hi - lo

    transient = np.isin(np.asarray(CLASSES)[d.label], ["SNIa", "SNII", "SLSN", "TDE"])
    # No quiescent counterpart before these outbursts: the whole cut curve is 2-4 nights.
    assert np.all(spans(d)[transient] < 3.7)
    assert np.median(spans(full)[np.isin(np.asarray(CLASSES)[full.label],
                                         ["SNIa", "SNII", "SLSN", "TDE"])]) > 10
