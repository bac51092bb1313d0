"""Photometry: what an exposure detects.

Each exposure of a field yields the sources inside its footprint whose measured flux
reaches 5 sigma, with magnitude errors from the signal-to-noise (sigma = 1.0857 / SNR,
SNR = 5 x 10^(0.4 (m5 - m)), plus a per-site calibration floor), and a Poisson number of
bogus detections (artefacts: cosmic rays, ghosts, subtraction residuals) at random
positions with magnitudes just above the limit, which the brain must learn to ignore.
Each detection carries what the survey's reference image holds at its position
(``ref_mag``, simulator/reference.py), as a difference-imaging pipeline reports it.

Exposures are processed in batches (the fast shell sends a minute's worth at a time), so
the cost is a few numpy calls per batch, not per exposure or per source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from observatory.sky import FieldGrid, points_in_fields
from observatory.times import unix_to_mjd
from simulator.reference import REF_DEPTH, bogus_reference, reference_magnitudes

CALIBRATION_FLOOR_MAG = 0.01

@dataclass
class ExposureBatch:
    field_id: np.ndarray
    band: np.ndarray  # 0, 1, 2
    t_mid_unix: np.ndarray
    m5: np.ndarray
    obs_index: np.ndarray  # the caller's index of each exposure


@dataclass
class Detections:
    """Flat detections; ``exposure`` indexes the batch, ``truth`` the population (-1:
    bogus)."""

    exposure: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    mjd: np.ndarray
    band: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    truth: np.ndarray
    ref_mag: np.ndarray | None = None  # the reference at the position (+inf: nothing)


class Photometry:
    def __init__(self, population, grid: FieldGrid, seed: int, bogus_per_exposure: float):
        self.population = population
        self.grid = grid
        self.seed = seed
        self.bogus_rate = bogus_per_exposure
        # Sources of each field (a source in an overlap belongs to both fields).
        self.sources, owner = points_in_fields(population.ra_deg, population.dec_deg,
                                               grid.ra_deg, grid.dec_deg, grid.side_deg)
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(owner,
                                                                  minlength=grid.size))])
        # What the reference holds at every source, drawn once (its own random stream).
        p = population
        idx = np.arange(p.size)
        base = np.stack([p.baseline_magnitudes(idx, b) for b in range(3)], axis=1)
        self.reference = reference_magnitudes(
            p.class_name, base, p.ref_mag, REF_DEPTH,
            np.random.default_rng([seed, 0x5EF])).astype(np.float32)

    def detect(self, batch: ExposureBatch, batch_seed: int) -> Detections:
        rng = np.random.default_rng([self.seed, batch_seed])
        starts = self.offsets[batch.field_id]
        lengths = self.offsets[batch.field_id + 1] - starts
        exp = np.repeat(np.arange(len(batch.field_id)), lengths)
        pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = self.sources[np.repeat(starts, lengths) + pos]
        true = self.population.magnitudes(src, batch.t_mid_unix[exp], batch.band[exp])
        m5 = batch.m5[exp]
        with np.errstate(over="ignore", invalid="ignore"):
            snr = 5.0 * 10 ** (0.4 * (m5 - true))
        flux_obs = snr + rng.standard_normal(src.size)  # in units of the flux noise
        ok = np.isfinite(true) & (flux_obs >= 5.0)
        snr_obs = flux_obs[ok]
        mag = true[ok] - 2.5 * np.log10(snr_obs / snr[ok])
        err = np.hypot(1.0857 / snr_obs, CALIBRATION_FLOOR_MAG)
        e = exp[ok]
        # Astrometric scatter: about the seeing over the signal-to-noise (1" seeing).
        pos_sigma_deg = np.maximum(0.05, 0.6 / snr_obs) / 3600.0
        dec_true = self.population.dec_deg[src[ok]]
        dec = np.clip(dec_true + rng.normal(0, 1, e.size) * pos_sigma_deg, -90, 90)
        ra = (self.population.ra_deg[src[ok]] + rng.normal(0, 1, e.size) * pos_sigma_deg
              / np.maximum(np.cos(np.radians(dec_true)), 1e-3)) % 360.0
        # Bogus detections, uniform in the footprint, just above the limit.
        n_bogus = rng.poisson(self.bogus_rate, len(batch.field_id))
        be = np.repeat(np.arange(len(batch.field_id)), n_bogus)
        half = self.grid.side_deg / 2
        f = batch.field_id[be]
        bdec = np.clip(self.grid.dec_deg[f] + rng.uniform(-half, half, be.size), -89.99, 89.99)
        bra = (self.grid.ra_deg[f] + rng.uniform(-half, half, be.size)
               / np.cos(np.radians(bdec))) % 360.0
        bmag = batch.m5[be] - rng.exponential(0.4, be.size)
        berr = np.hypot(1.0857 / (5.0 * 10 ** (0.4 * (batch.m5[be] - bmag))),
                        CALIBRATION_FLOOR_MAG)
        bref = bogus_reference(be.size, REF_DEPTH, np.random.default_rng([self.seed, batch_seed,
                                                                          0x5EF]))
        band_b = batch.band[be]
        return Detections(
            np.concatenate([e, be]),
            np.concatenate([ra, bra]),
            np.concatenate([dec, bdec]),
            unix_to_mjd(np.concatenate([batch.t_mid_unix[e], batch.t_mid_unix[be]])),
            np.concatenate([batch.band[e], batch.band[be]]),
            np.concatenate([mag, bmag]),
            np.concatenate([err, berr]),
            np.concatenate([src[ok], np.full(be.size, -1)]),
            np.concatenate([self.reference[src[ok], batch.band[e]],
                            bref[np.arange(be.size), band_b]]))
