"""The survey's reference at a source (``ref_mag``): what the simulator's reference holds,
how it travels (protocol, daemon, associator, `brain classify` input) and the features
the classifier makes of it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from brain.core.association import Associator, DetectionBatch
from brain.core.followup import candidate_ids
from brain.core.store import open_store
from brain.ops.hosting import check_ref
from brain.shells.daemon import Daemon
from drivers import protocol as P
from policies.context import CONTEXT_NAMES, context_features, reference_features
from policies.lightcurve_io import LightCurveInputError, read_detections_csv
from simulator.reference import REF_DEPTH, bogus_reference, reference_magnitudes


def test_the_reference_holds_a_variables_star_and_nothing_under_a_kilonova():
    rng = np.random.default_rng(3)
    n = 4000
    names = np.array(["RRL"] * n + ["KN"] * n + ["TDE"] * n)
    base = np.full((3 * n, 3), np.inf)
    base[:n] = np.array([19.0, 18.8, 18.7])  # the RR Lyra's mean
    base[n // 2:n] = 22.5  # half of them fainter than the reference's depth
    peak = np.full(3 * n, 19.0)
    ref = reference_magnitudes(names, base, peak, REF_DEPTH, rng)
    star = ref[: n // 2]
    assert np.abs(star - [19.0, 18.8, 18.7]).max() < 0.2  # the star itself
    assert np.isinf(ref[n // 2:n]).all()  # too faint for the reference: nothing
    kn, tde = np.isfinite(ref[n:2 * n]).any(axis=1), np.isfinite(ref[2 * n:]).any(axis=1)
    # kilonovae mostly on nothing (a host inside the radius now and then), tidal
    # disruptions mostly on their galaxy's nucleus
    assert 0.1 < kn.mean() < 0.5 and tde.mean() > 0.55
    assert not np.isnan(ref).any()  # the simulator always says
    again = reference_magnitudes(names, base, peak, REF_DEPTH, np.random.default_rng(3))
    np.testing.assert_array_equal(ref, again)  # a seed, the same reference
    bogus = bogus_reference(2000, REF_DEPTH, np.random.default_rng(1))
    assert 0.2 < np.isfinite(bogus).any(axis=1).mean() < 0.4


def test_reference_features_present_excess_and_brightness():
    ref = np.array([[20.0, 19.5, np.nan], [np.inf, np.inf, np.inf], [np.nan] * 3,
                    [np.inf, 21.0, 20.5]])
    obj = np.array([0, 0, 0, 1, 1, 3, 3, 3])
    band = np.array([0, 1, 1, 1, 2, 1, 1, 2])
    mag = np.array([19.0, 19.5, 19.3, 18.0, 18.0, 20.0, 19.0, 20.6])
    f = reference_features(ref, 4, obj, band, mag)
    np.testing.assert_allclose(f[0], [1.0, 0.2, 19.5])  # median of 1.0, 0.0, 0.2
    assert f[1, 0] == 0.0 and np.isnan(f[1, 1:]).all()  # nothing there
    assert np.isnan(f[2]).all()  # never said
    np.testing.assert_allclose(f[3], [1.0, 1.0, 20.5])  # median of 1, 2, -0.1
    c = context_features(None, 4, ref, obj, band, mag)
    assert c.shape == (4, len(CONTEXT_NAMES))
    np.testing.assert_array_equal(c[:, 2:], f)
    assert np.isnan(context_features(None, 4)).all()


def test_reference_magnitudes_in_a_request_are_checked():
    assert np.isnan(check_ref(None, 2)).all()
    ok = check_ref(np.array([[19.0, np.inf, np.nan]]), 1)
    assert ok[0, 0] == 19.0 and np.isinf(ok[0, 1]) and np.isnan(ok[0, 2])
    with pytest.raises(ValueError, match="shape"):
        check_ref(np.zeros((2, 2)), 2)
    with pytest.raises(ValueError, match=r"-30\.\.40"):
        check_ref(np.array([[-np.inf, 19.0, 19.0]]), 1)
    with pytest.raises(ValueError, match=r"-30\.\.40"):
        check_ref(np.array([[1e9, 19.0, 19.0]]), 1)


def _detections(sources):
    return {"name": "detections", "data": {"obs_id": "o1", "field_id": 3, "band": "r",
                                           "t_mid": 1.0e9, "limiting_mag": 20.2,
                                           "sources": sources}}


def test_ref_mag_on_the_wire_is_a_number_or_nil():
    src = {"ra_deg": 10.0, "dec_deg": 20.0, "mag": 19.0, "mag_err": 0.05}
    for ref in (19.5, None):
        msg = P.decode(P.encode("EVENT", _detections([{**src, "ref_mag": ref}])),
                       P.FROM_DEVICE)
        assert msg.body["data"]["sources"][0]["ref_mag"] == ref
    P.decode(P.encode("EVENT", _detections([src])), P.FROM_DEVICE)  # absent: fine
    with pytest.raises(P.ProtocolError, match="ref_mag") as e:
        P.decode(P.encode("EVENT", _detections([{**src, "ref_mag": "bright"}])),
                 P.FROM_DEVICE)
    assert e.value.code == "bad_message"


def test_the_daemon_reads_ref_mag_as_magnitude_nothing_or_unknown(config):
    src = {"ra_deg": 10.0, "dec_deg": 20.0, "mag": 19.0, "mag_err": 0.05}
    host = SimpleNamespace(config=config)
    a = Daemon._arrays(host, _detections([{**src, "ref_mag": 19.5}, {**src, "ref_mag": None},
                                          src])["data"])
    assert a["ref_mag"][0] == 19.5 and np.isinf(a["ref_mag"][1]) and np.isnan(a["ref_mag"][2])
    batch = Daemon._batch(a)
    np.testing.assert_array_equal(batch.ref_mag, a["ref_mag"])
    # a number that is no magnitude: unknown, and the detection itself is kept
    odd = Daemon._arrays(host, _detections([{**src, "ref_mag": 1e30}, src])["data"])
    assert np.isnan(odd["ref_mag"]).all() and odd["mag"].tolist() == [19.0, 19.0]
    plain = Daemon._arrays(host, _detections([src])["data"])
    assert "ref_mag" not in plain and Daemon._batch(plain).ref_mag is None


def _batch(ra, band, ref, mjd=61000.1):
    n = len(ra)
    return DetectionBatch(np.array(ra, float), np.full(n, 5.0), np.full(n, mjd),
                          np.array(band), np.full(n, 19.0), np.full(n, 0.05),
                          None, None if ref is None else np.array(ref, float))


def test_the_catalogue_keeps_the_latest_reference_per_band():
    a = Associator(radius_arcsec=2.0)
    a.add(_batch([10.0, 10.0, 20.0], [0, 1, 1], [19.2, np.inf, np.nan]))
    assert a.n_objects == 2
    r0, r1 = a.cat["ref"][0], a.cat["ref"][1]
    assert r0[0] == pytest.approx(19.2) and np.isinf(r0[1]) and np.isnan(r0[2])
    assert np.isnan(r1).all()  # only unknown so far
    a.add(_batch([10.0, 20.0], [1, 2], [19.4, 21.0], mjd=61000.2))  # later reports count
    assert a.cat["ref"][0][1] == pytest.approx(19.4) and a.cat["ref"][1][2] == 21.0
    a.add(_batch([10.0], [1], [np.nan], mjd=61000.3))  # unknown does not erase
    a.add(_batch([10.0], [1], None, mjd=61000.4))  # neither does a batch without the field
    assert a.cat["ref"][0][1] == pytest.approx(19.4)
    both = DetectionBatch.concat([_batch([1.0], [0], None), _batch([2.0], [0], [18.0])])
    assert np.isnan(both.ref_mag[0]) and both.ref_mag[1] == 18.0


def _csv(tmp_path, rows, name="lc.csv"):
    p = tmp_path / name
    p.write_text("\n".join(["object_id,mjd,band,mag,mag_err,ref_mag", *rows]) + "\n")
    return p


def test_reading_the_optional_ref_mag_column(tmp_path):
    t = read_detections_csv(_csv(tmp_path, [
        "a,60000.0,r,19,0.05,19.4", "a,60000.1,r,19.1,0.05,19.3", "a,60000.1,g,19.1,0.05,",
        "b,60000.0,g,18,0.05,none", "c,60000.0,i,18,0.05,"]))
    assert t.object_ids == ["a", "b", "c"]
    assert t.ref[0, 1] == pytest.approx(19.3)  # the latest row that says
    assert np.isnan(t.ref[0, [0, 2]]).all()
    assert np.isinf(t.ref[1, 0]) and np.isnan(t.ref[1, 1:]).all()
    assert np.isnan(t.ref[2]).all()
    with pytest.raises(LightCurveInputError, match="row 2: ref_mag"):
        read_detections_csv(_csv(tmp_path, ["a,60000,r,19,0.05,bright"], "bad.csv"))


def _night(ra, mag, ref, mjd, band=1, err=0.05):
    """One detection per position at ``mjd`` (magnitudes ``mag``, references ``ref``)."""
    n = len(ra)
    return DetectionBatch(np.array(ra, float), np.full(n, 5.0), np.full(n, mjd),
                          np.full(n, band), np.array(mag, float), np.full(n, err), None,
                          None if ref is None else np.array(ref, float))


def _reference_sky(a: Associator, mjd0: float = 61000.1) -> list[float]:
    """Five new objects of three detections each: a star as bright as the reference's
    source there (A), one 1.5 mag brighter than it (B), one where the reference has
    nothing (C), one whose reference is unknown (D), and one whose reference source is
    0.7 mag fainter than the detections (E: beyond 0.5 mag + 3 errors of 0.05)."""
    ra = [10.0, 20.0, 30.0, 40.0, 50.0]
    for k in range(3):
        a.add(_night(ra, [19.0 + 0.05 * k, 18.0, 19.0, 19.0, 19.0],
                     [19.1, 19.5, np.inf, np.nan, 19.7], mjd0 + 0.05 * k))
    return ra


def test_a_new_object_as_bright_as_its_reference_star_is_no_candidate():
    """The reference rule (docs/season.md): a newly seen object sitting on a reference
    source of its own brightness is a star the survey already knew, not new; brighter
    than its source, where the reference has nothing, or with no reference known, it is
    new, as before. Without ``reference_mag`` nothing changes."""
    a = Associator(radius_arcsec=2.0)
    _reference_sky(a)
    now = 61000.3
    got = candidate_ids(a, 3, now, 3.0, 0.5, classified_only=False, reference_mag=0.5)
    assert a.cat["ra_deg"][got].tolist() == [20.0, 30.0, 40.0, 50.0]
    every = candidate_ids(a, 3, now, 3.0, 0.5, classified_only=False)
    assert a.cat["ra_deg"][every].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
    # A looser margin takes E (0.7 mag - 3 errors = 0.55) for the star it sits on too.
    loose = candidate_ids(a, 3, now, 3.0, 0.5, classified_only=False, reference_mag=0.6)
    assert a.cat["ra_deg"][loose].tolist() == [20.0, 30.0, 40.0]
    # The star A flares 2 mag tonight: a detection far from its reference makes it new.
    a.add(_night([10.0], [17.0], [19.1], 61000.35))
    got = candidate_ids(a, 3, 61000.4, 3.0, 0.5, classified_only=False, reference_mag=0.5)
    assert 10.0 in a.cat["ra_deg"][got].tolist()


def test_the_reference_rule_holds_across_a_restart(tmp_path):
    """The departures are not stored: a restart computes them again from the window, so
    the same objects are candidates after it."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    a = Associator(radius_arcsec=2.0, store=open_store(url))
    _reference_sky(a)
    a.flush()
    a.store.commit()
    before = a.ids[candidate_ids(a, 3, 61000.3, 3.0, 0.5, False, 0.5)].tolist()
    b = Associator(radius_arcsec=2.0, store=open_store(url))
    b.load(min_detections=3, now_mjd=61000.3)
    after = b.ids[candidate_ids(b, 3, 61000.3, 3.0, 0.5, False, 0.5)].tolist()
    assert after == before and len(after) == 4
