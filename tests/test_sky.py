"""Sky geometry: the field tiling, the square footprint test, separations and union
areas, which the survey's coverage numbers rest on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from observatory.sky import (
    FULL_SKY_DEG2,
    AreaLattice,
    FieldGrid,
    in_footprint,
    separation_deg,
)

FOV_DEG2 = 12.0
SIDE_DEG = math.sqrt(FOV_DEG2)


def _square_solid_angle_deg2(side_deg: float) -> float:
    """Exact solid angle of a gnomonic square of angular side ``side_deg``."""
    a = math.tan(math.radians(side_deg / 2))
    return 4 * math.asin(a * a / (1 + a * a)) * (180 / math.pi) ** 2


@pytest.fixture(scope="module")
def grids():
    return {fit: FieldGrid.tile(FOV_DEG2, fit) for fit in ("center", "edge")}


@pytest.fixture(scope="module")
def lattices(grids):
    return {fit: AreaLattice(g) for fit, g in grids.items()}


@pytest.mark.parametrize("fit", ["center", "edge"])
def test_tiling_size(grids, fit):
    """A 12 deg^2 camera tiles the sky with 3,300-3,700 fields (41,253 deg^2 / 12 plus
    a few percent overlap), with every centre a valid position."""
    g = grids[fit]
    assert 3300 <= g.size <= 3700
    assert np.all((g.ra_deg >= 0) & (g.ra_deg < 360))
    assert np.all(np.abs(g.dec_deg) < 90)
    assert g.side_deg == pytest.approx(SIDE_DEG)


def test_unknown_ring_fit_is_refused():
    """A misspelt ring fit is an error, not a silent default."""
    with pytest.raises(ValueError, match="ring_fit"):
        FieldGrid.tile(FOV_DEG2, "middle")


def test_field_area_from_lattice(lattices):
    """A field's area measured on the lattice is 12 deg^2 within 3 %."""
    areas = lattices["center"].field_area_deg2()
    assert _square_solid_angle_deg2(SIDE_DEG) == pytest.approx(FOV_DEG2, rel=1e-3)
    assert float(np.mean(areas)) == pytest.approx(FOV_DEG2, rel=0.03)
    assert float(np.median(areas)) == pytest.approx(FOV_DEG2, rel=0.03)
    assert areas.min() > 0.9 * FOV_DEG2 and areas.max() < 1.1 * FOV_DEG2


@pytest.mark.parametrize(("fit", "min_fraction"), [("edge", 0.999), ("center", 0.99)])
def test_tiling_covers_the_sphere(grids, lattices, fit, min_fraction):
    """The 'edge' ring fit leaves no gaps (>= 99.9 % of the sphere); 'center' leaves
    only corner slivers (>= 99 %)."""
    g = grids[fit]
    covered = lattices[fit].union_deg2(np.arange(g.size)) / FULL_SKY_DEG2
    assert covered >= min_fraction


def test_edge_fit_needs_more_fields_than_center(grids):
    """Fitting rings at their edge costs fields: the trade-off documented in sky.py."""
    assert grids["edge"].size > grids["center"].size


def _ring_near(grid, dec_deg):
    ring = int(grid.ring[np.argmin(np.abs(grid.dec_deg - dec_deg))])
    ids = np.flatnonzero(grid.ring == ring)
    return ids[np.argsort(grid.ra_deg[ids])]


def test_union_of_separate_fields_is_their_sum(grids, lattices):
    """Hand-made exact case: every third field of the ring nearest the equator (no two
    overlap) has a union area of n x one field's area, within 1 %."""
    g, lat = grids["center"], lattices["center"]
    ring = _ring_near(g, 0.0)
    chosen = ring[::3][:-1]  # drop the last so the wrap-around pair is also 3 apart
    seps = separation_deg(g.ra_deg[chosen], g.dec_deg[chosen],
                          np.roll(g.ra_deg[chosen], 1), np.roll(g.dec_deg[chosen], 1))
    assert seps.min() > 2 * SIDE_DEG  # far apart: no overlaps by construction
    union = lat.union_deg2(chosen)
    expected = len(chosen) * _square_solid_angle_deg2(SIDE_DEG)
    assert union == pytest.approx(expected, rel=0.01)
    assert union == pytest.approx(float(lat.field_area_deg2()[chosen].sum()), rel=1e-12)


def test_union_counts_a_field_once(grids, lattices):
    """The same field listed twice counts once; neighbours in a ring at dec 60 overlap
    (union < sum) but cover more than either alone."""
    g, lat = grids["center"], lattices["center"]
    ring = _ring_near(g, 60.0)
    f, h = int(ring[10]), int(ring[11])
    one = lat.union_deg2([f])
    assert lat.union_deg2([f, f]) == one
    assert lat.union_deg2(np.array([f, f, f])) == one
    both = lat.union_deg2([f, h])
    assert max(one, lat.union_deg2([h])) < both < one + lat.union_deg2([h])
    assert lat.union_deg2([]) == 0.0


# in_footprint ----------------------------------------------------------------------------
def _from_tangent(xi, eta, ra0, dec0):
    """Inverse gnomonic projection: tangent-plane (xi, eta) about (ra0, dec0) -> deg."""
    d0 = math.radians(dec0)
    xi, eta = np.asarray(xi, dtype=float), np.asarray(eta, dtype=float)
    denom = math.cos(d0) - eta * math.sin(d0)
    ra = ra0 + np.degrees(np.arctan2(xi, denom))
    dec = np.degrees(np.arctan2(math.sin(d0) + eta * math.cos(d0), np.hypot(xi, denom)))
    return ra % 360.0, dec


@pytest.mark.parametrize(("ra0", "dec0"), [(0.0, 0.0), (123.4, 45.0), (359.0, -60.0),
                                           (200.0, 88.5), (10.0, -89.0)])
def test_footprint_edges_and_corners(ra0, dec0):
    """Points just inside the square's edges and corners are in, just outside are out,
    the centre is in, and so is nothing on the far side of the sky."""
    h = math.tan(math.radians(SIDE_DEG / 2))
    eps = 1e-6
    inside = [(0, 0), (h - eps, 0), (-(h - eps), 0), (0, h - eps), (0, -(h - eps)),
              (h - eps, h - eps), (-(h - eps), h - eps), (h - eps, -(h - eps)),
              (-(h - eps), -(h - eps))]
    outside = [(h + eps, 0), (-(h + eps), 0), (0, h + eps), (0, -(h + eps)),
               (h + eps, h + eps), (-(h + eps), -(h - eps)), (h - eps, -(h + eps))]
    for pts, want in ((inside, True), (outside, False)):
        xi, eta = np.array(pts, dtype=float).T
        ra, dec = _from_tangent(xi, eta, ra0, dec0)
        got = in_footprint(ra, dec, ra0, dec0, SIDE_DEG)
        assert got.tolist() == [want] * len(pts), (ra0, dec0, want)
    anti_ra, anti_dec = (ra0 + 180.0) % 360.0, -dec0
    assert not in_footprint(anti_ra, anti_dec, ra0, dec0, SIDE_DEG)


def test_footprint_wraps_in_ra_and_widens_with_declination():
    """RA wraps at 0/360, and at high declination the square spans more RA."""
    assert in_footprint(0.5, 0.0, 359.5, 0.0, SIDE_DEG)
    assert in_footprint(359.5, 0.0, 0.5, 0.0, SIDE_DEG)
    # At dec 60 the half-width of 1.73 deg spans about 3.46 deg of RA.
    assert in_footprint(3.0, 60.0, 0.0, 60.0, SIDE_DEG)
    assert not in_footprint(3.0, 0.0, 0.0, 0.0, SIDE_DEG)
    # A field at the pole contains the pole from any RA.
    assert np.all(in_footprint(np.arange(0, 360, 30.0), 89.5, 0.0, 90.0, SIDE_DEG))


def test_separation():
    """Great-circle separations: zero, quarter turn, antipodes, tiny angles, RA wrap."""
    assert separation_deg(10.0, 20.0, 10.0, 20.0) == pytest.approx(0.0, abs=1e-12)
    assert separation_deg(0.0, 0.0, 90.0, 0.0) == pytest.approx(90.0)
    assert separation_deg(0.0, 90.0, 123.0, 0.0) == pytest.approx(90.0)
    assert separation_deg(30.0, 10.0, 210.0, -10.0) == pytest.approx(180.0)
    assert separation_deg(359.9, 0.0, 0.1, 0.0) == pytest.approx(0.2, rel=1e-9)
    assert separation_deg(0.0, 0.0, 0.0, 1e-6) == pytest.approx(1e-6, rel=1e-6)
    rng = np.random.default_rng(4)
    ra1, ra2 = rng.uniform(0, 360, (2, 1000))
    dec1, dec2 = np.degrees(np.arcsin(rng.uniform(-1, 1, (2, 1000))))
    v1 = np.stack([np.cos(np.radians(dec1)) * np.cos(np.radians(ra1)),
                   np.cos(np.radians(dec1)) * np.sin(np.radians(ra1)), np.sin(np.radians(dec1))])
    v2 = np.stack([np.cos(np.radians(dec2)) * np.cos(np.radians(ra2)),
                   np.cos(np.radians(dec2)) * np.sin(np.radians(ra2)), np.sin(np.radians(dec2))])
    dot = np.clip(np.sum(v1 * v2, axis=0), -1, 1)
    np.testing.assert_allclose(separation_deg(ra1, dec1, ra2, dec2),
                               np.degrees(np.arccos(dot)), atol=1e-6)
