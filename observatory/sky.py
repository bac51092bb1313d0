"""Sky geometry: the field tiling, camera footprints, and union areas.

The tiling is a set of declination rings, each ring as tall as the camera field (the
ring height is 180 deg divided evenly), with just enough fields in each ring that the
camera's square footprints (gnomonic, aligned with RA/Dec) leave no gap along the
ring's centre line (or, with ``ring_fit="edge"``, its edge nearest the equator).
Measured trade-off in ``docs/sky.md``.

Union areas (the survey's coverage) are counted on a Fibonacci lattice of points of
equal solid angle, so an area is ``count * 41252.96 / n_points`` deg^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

FULL_SKY_DEG2 = 4 * math.pi * (180 / math.pi) ** 2


def unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 3) of positions given in degrees."""
    ra = np.radians(ra_deg)
    dec = np.radians(dec_deg)
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


# ICRS to Galactic rotation (Hipparcos definition, as astropy's).
ICRS_TO_GAL = np.array([
    [-0.0548756577125916, -0.8734370519556159, -0.4838350736167155],
    [0.4941094371927268, -0.4448297212232952, 0.7469821839866676],
    [-0.8676661375596576, -0.1980763372730005, 0.4559838136873016]])


def galactic_lb(ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
    """Galactic longitude and latitude (deg) of ICRS positions (deg)."""
    x, y, z = ICRS_TO_GAL @ unit_vectors(np.asarray(ra_deg), np.asarray(dec_deg)).T
    return np.degrees(np.arctan2(y, x)) % 360.0, np.degrees(np.arcsin(np.clip(z, -1, 1)))


def separation_deg(ra1_deg, dec1_deg, ra2_deg, dec2_deg) -> np.ndarray:
    """Great-circle separation (deg), numerically stable (Vincenty)."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1_deg, dec1_deg, ra2_deg, dec2_deg))
    dra = ra2 - ra1
    s1, c1, s2, c2 = np.sin(dec1), np.cos(dec1), np.sin(dec2), np.cos(dec2)
    num = np.hypot(c2 * np.sin(dra), c1 * s2 - s1 * c2 * np.cos(dra))
    den = s1 * s2 + c1 * c2 * np.cos(dra)
    return np.degrees(np.arctan2(num, den))


def in_footprint(ra_deg, dec_deg, ra0_deg, dec0_deg, side_deg: float) -> np.ndarray:
    """True where (ra, dec) lies inside the square field of side ``side_deg`` (deg)
    centred on (ra0, dec0), aligned with RA/Dec (a square on the tangent plane)."""
    ra, dec, ra0, dec0 = map(np.radians, (ra_deg, dec_deg, ra0_deg, dec0_deg))
    dra = ra - ra0
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(dra)
    xi = np.cos(dec) * np.sin(dra) / np.where(cosc > 0, cosc, 1.0)
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(dra)) / np.where(
        cosc > 0, cosc, 1.0)
    half = math.tan(math.radians(side_deg / 2))
    return (cosc > 0) & (np.abs(xi) <= half) & (np.abs(eta) <= half)


def points_in_fields(ra_deg, dec_deg, field_ra_deg, field_dec_deg, side_deg: float,
                     tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every (point, field) pair with the point inside the field's square footprint.

    Returns two equal-length index arrays (points, fields), grouped by field in field
    order. A k-d tree over the points (built here unless given) finds candidates within
    the footprint's half-diagonal; ``in_footprint`` keeps those really inside."""
    field_ra = np.atleast_1d(np.asarray(field_ra_deg, dtype=float))
    field_dec = np.atleast_1d(np.asarray(field_dec_deg, dtype=float))
    if tree is None:
        tree = cKDTree(unit_vectors(np.asarray(ra_deg), np.asarray(dec_deg)))
    radius = 2 * math.sin(math.radians(side_deg / math.sqrt(2) * 1.02) / 2)
    near = tree.query_ball_point(unit_vectors(field_ra, field_dec), r=radius)
    counts = np.fromiter((len(c) for c in near), dtype=np.int64, count=len(near))
    flat = np.fromiter((j for c in near for j in c), dtype=np.int64, count=int(counts.sum()))
    owner = np.repeat(np.arange(len(near)), counts)
    inside = in_footprint(np.asarray(ra_deg)[flat], np.asarray(dec_deg)[flat],
                          field_ra[owner], field_dec[owner], side_deg)
    return flat[inside], owner[inside]


def _ring_count(dec_edge_deg: float, dec_center_deg: float, side_deg: float) -> int:
    """Fields needed in a ring so that footprints centred at ``dec_center_deg`` cover
    the whole circle at ``dec_edge_deg`` (the ring edge nearest the equator)."""
    t = math.tan(math.radians(side_deg / 2))
    dc, de = math.radians(dec_center_deg), math.radians(dec_edge_deg)
    # East edge of the square is the great circle with normal (-e_xi + t c); where it
    # crosses the declination circle de gives the footprint's RA half-span there.
    amp = math.cos(de) * math.sqrt(1 + (t * math.cos(dc)) ** 2)
    if amp <= abs(t * math.sin(dc) * math.sin(de)):
        return 1
    half_span = math.atan(t * math.cos(dc)) + math.asin(t * math.sin(dc) * math.sin(de) / amp)
    return max(1, math.ceil(2 * math.pi / (2 * half_span) - 1e-9))


@dataclass(frozen=True)
class FieldGrid:
    """The survey's fields: ``ra_deg``, ``dec_deg`` (ICRS centres) and ``ring`` index."""

    side_deg: float
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    ring: np.ndarray

    @classmethod
    def tile(cls, fov_deg2: float, ring_fit: str = "center") -> FieldGrid:
        """Tile the sky. ``ring_fit="edge"`` fits each ring's field count to its edge
        nearest the equator (complete cover, 1-4 % neighbour overlap); ``"center"`` fits
        it to the ring's centre line (0.6 % of the sky left in corner slivers, 0.6-1.4 %
        overlap), which wastes less of every exposure."""
        if ring_fit not in ("center", "edge"):
            raise ValueError(f"ring_fit must be 'center' or 'edge', got {ring_fit!r}")
        side = math.sqrt(fov_deg2)
        n_rings = math.ceil(180 / side - 1e-9)
        height = 180 / n_rings
        lows = -90 + height * np.arange(n_rings)
        centers = lows + height / 2
        counts = []
        for lo, center in zip(lows, centers, strict=True):
            hi = lo + height
            edge = 0.0 if lo < 0 < hi else (lo if center > 0 else hi)
            counts.append(_ring_count(edge if ring_fit == "edge" else center, center, side))
        ras, decs, rings = [], [], []
        for k, n in enumerate(counts):
            # Stagger alternate rings by half a field so ring seams do not line up.
            ras.append((np.arange(n) + 0.5 * (k % 2)) * 360.0 / n)
            decs.append(np.full(n, centers[k]))
            rings.append(np.full(n, k))
        return cls(side, np.concatenate(ras) % 360.0, np.concatenate(decs),
                   np.concatenate(rings).astype(np.int16))

    @property
    def size(self) -> int:
        return len(self.ra_deg)

    @property
    def xyz(self) -> np.ndarray:
        return unit_vectors(self.ra_deg, self.dec_deg)


class AreaLattice:
    """Equal-area points and, per field, the points inside its footprint.

    ``union_deg2(field_ids)`` is the area of the union of those fields' footprints.
    """

    def __init__(self, grid: FieldGrid, n_points: int = 400_000):
        self.grid = grid
        self.n_points = n_points
        self.point_area_deg2 = FULL_SKY_DEG2 / n_points
        i = np.arange(n_points) + 0.5
        dec = np.degrees(np.arcsin(1 - 2 * i / n_points))
        ra = np.degrees(np.pi * (1 + 5**0.5) * i) % 360.0
        self.points, owner = points_in_fields(ra, dec, grid.ra_deg, grid.dec_deg,
                                              grid.side_deg)
        per_field = np.bincount(owner, minlength=grid.size)
        self.offsets = np.concatenate([[0], np.cumsum(per_field)])

    def field_points(self, field_ids: np.ndarray) -> np.ndarray:
        ids = np.unique(np.asarray(field_ids, dtype=np.int64))
        if ids.size == 0:
            return np.empty(0, dtype=np.int64)
        starts, stops = self.offsets[ids], self.offsets[ids + 1]
        lengths = stops - starts
        idx = np.repeat(starts - np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths)
        return self.points[idx + np.arange(lengths.sum())]

    def union_deg2(self, field_ids) -> float:
        pts = self.field_points(field_ids)
        return float(np.unique(pts).size * self.point_area_deg2)

    def field_area_deg2(self) -> np.ndarray:
        return np.diff(self.offsets) * self.point_area_deg2
