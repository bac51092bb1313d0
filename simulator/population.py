"""The simulated sky: which sources exist, where, when and how bright.

One-off events (SNIa, SNII, SNIbc, SLSN, TDE, KN, uLens) are drawn from a rate (events
per deg^2 per day with r-band peak brighter than 21); CV and Flare (recurrent eruptions
of a persistent star) and the variables from a surface density (per deg^2 with ref_mag
brighter than 21). Rates and densities are for high Galactic latitude; Galactic
classes are multiplied by 1 + A_disk exp(-|b| / h) + A_bulge exp(-(l^2 + b^2) / 2 s^2)
(``SPATIAL``). Counts fainter than 21 follow ``lightcurves.mag_distribution`` down to
the faint limit. The whole sky is sampled; fields, if given, select from it.

Whole-sky counts at ``density_scale=1``, faint limit 22.5, one night (t1 - t0 = 0.5 d;
seed 1); events are those brighter than the limit at some time in [t0, t1], and "r < 21"
counts sources brighter than 21 in r at one moment of the night:

======  =======  ======  ======  =======  ======  ======  =======  ======
class   sources  r < 21  class   sources  r < 21  class   sources  r < 21
======  =======  ======  ======  =======  ======  ======  =======  ======
SNIa     22,700   2,700  KN            3       0  RRL      56,200  38,100
SNII     13,500   1,650  CV       15,800   1,330  EB      113,000  47,800
SNIbc     1,500     180  Flare    45,400   8,300  DSCT     20,100   8,500
SLSN        700      90  uLens       280     100  LPV       9,400   4,900
TDE         520      60                           AGN     117,000  41,600
======  =======  ======  ======  =======  ======  ======  =======  ======

Total ~416,000 sources (155,000 brighter than 21 at a given time); sampling takes ~1.5 s,
all their r magnitudes at one time ~0.2 s, ``save`` ~26 MB. A longer run adds events
(~100 SN Ia a day brighter than 21 at peak) but no persistent sources.

Physical densities of some variables are higher (quasars to r = 21: ~30 deg^-2; M
dwarfs: hundreds); the adopted ones keep the sources whose variability a 30-s exposure
can detect, and the sky small enough to simulate (``density_scale`` scales all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from observatory.bands import BANDS
from observatory.sky import (
    FULL_SKY_DEG2,
    ICRS_TO_GAL,
    points_in_fields,
    unit_vectors,
)
from observatory.taxonomy import CLASSES, TRANSIENTS
from simulator import lightcurve_priors as lp
from simulator import lightcurves as lc

DAY_S = 86400.0
REFERENCE_MAG = 21.0
EVENT_CLASSES = ("SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "uLens")

# Events deg^-2 day^-1 with r peak < 21 (EVENT_CLASSES), else sources deg^-2 with
# ref_mag < 21, at high Galactic latitude.
RATES = {
    # ZTF Bright Transient Survey: ~700 SN Ia yr^-1 brighter than 18.5 over ~17,000
    # deg^2 (Fremling et al. 2020, ApJ 895, 32; Perley et al. 2020, ApJ 904, 35), scaled
    # by 10^(0.6 x 2.5) and ~0.7 for cosmological dimming by r = 21.
    "SNIa": 2.5e-3,
    # BTS class fractions relative to SN Ia (II 0.28, Ibc 0.07, SLSN ~0.012).
    "SNII": 7.0e-4,
    "SNIbc": 1.7e-4,
    "SLSN": 3.0e-5,
    # ~1 % of SN Ia in flux-limited samples (Yao et al. 2023, ApJL 955, L6).
    "TDE": 2.5e-5,
    # BNS rate ~300 Gpc^-3 yr^-1 (LVK, Abbott et al. 2023, PRX 13, 011048) within the
    # ~250 Mpc to which an M = -16 kilonova peaks brighter than 21.
    "KN": 1.3e-6,
    # Negligible at high latitude; the bulge term gives ~2 events deg^-2 yr^-1 in r at
    # its centre (OGLE/KMTNet I-band rates ~10-20, Mroz et al. 2019, ApJS 244, 29).
    "uLens": 2.0e-6,
    # SDSS CVs ~0.03 deg^-2 to g = 20.5 in quiescence (Szkody et al. 2011, AJ 142,
    # 181); outburst peaks 2-6 mag brighter.
    "CV": 0.05,
    # Active M dwarfs with flares detectable in 30 s (Kowalski et al. 2009, AJ 138, 633).
    "Flare": 0.2,
    # Halo RRL ~1.5 deg^-2 to r ~ 21 in Stripe 82 (Sesar et al. 2010, ApJ 708, 717); we
    # keep a third. ZTF periodic catalogue (Chen et al. 2020, ApJS 249, 18) for EB,
    # DSCT and LPV, high-latitude values.
    "RRL": 0.5,
    "EB": 0.3,
    "DSCT": 0.05,
    "LPV": 0.02,
    # Quasars with SF_inf >= 0.1 mag that a 30-s r = 21 exposure can follow (of ~30
    # deg^-2; Palanque-Delabrouille et al. 2016, A&A 587, A41).
    "AGN": 1.0,
}

# (A_disk, h_deg, A_bulge, sigma_deg): density multiplier 1 + A_disk exp(-|b|/h) +
# A_bulge exp(-(l^2 + b^2) / (2 sigma^2)). Extragalactic classes are uniform (dust in
# the plane is not modelled).
SPATIAL = {
    "RRL": (3.0, 10.0, 60.0, 6.0), "EB": (20.0, 8.0, 20.0, 6.0), "DSCT": (30.0, 6.0, 0.0, 1.0),
    "LPV": (40.0, 6.0, 100.0, 6.0), "CV": (10.0, 10.0, 0.0, 1.0),
    "Flare": (3.0, 20.0, 0.0, 1.0), "uLens": (100.0, 3.0, 3000.0, 5.0),
}
_UNIFORM = (0.0, 1.0, 0.0, 1.0)
ULENS_REACH_DAYS = 600.0  # 3 tE_max: an event peaking further from the run is flat in it
ULENS_MIN_DMAG = 0.05  # a lensing event must brighten this much (mag) within the run



def sky_weight(cls: str, l_deg, b_deg) -> np.ndarray:
    """Density multiplier of ``cls`` at Galactic (l, b) (deg), 1 at high latitude."""
    a_d, h, a_b, s = SPATIAL.get(cls, _UNIFORM)
    lw = (np.asarray(l_deg) + 180.0) % 360.0 - 180.0
    b = np.asarray(b_deg)
    return 1.0 + a_d * np.exp(-np.abs(b) / h) + a_b * np.exp(-(lw**2 + b**2) / (2 * s * s))


def sky_integral_deg2(cls: str) -> float:
    """Integral of ``sky_weight`` over the sphere (deg^2): the all-sky count is this
    times the high-latitude density."""
    a_d, h, a_b, s = SPATIAL.get(cls, _UNIFORM)
    deg2 = (180 / math.pi) ** 2
    a = 180 / (math.pi * h)  # 1 / h in radians
    disk = 4 * math.pi * (a + math.exp(-a * math.pi / 2)) / (1 + a * a) * deg2
    s_rad = math.radians(s)
    bulge = 2 * math.pi * s_rad**2 * math.exp(-s_rad**2 / 2) * deg2
    return FULL_SKY_DEG2 + a_d * disk + a_b * bulge


def expected_count(cls: str, t0_unix: float, t1_unix: float, density_scale: float = 1.0,
                   faint_limit: float = 22.5) -> float:
    """Mean all-sky number drawn for ``cls`` before the visibility cut of events."""
    n = RATES[cls] * density_scale * lp.count_ratio(cls, faint_limit, REFERENCE_MAG)
    n *= sky_integral_deg2(cls)
    if cls in EVENT_CLASSES:
        before, after = _event_window_days(cls)
        n *= (t1_unix - t0_unix) / DAY_S + before + after
    return n


def _event_window_days(cls: str) -> tuple[float, float]:
    if cls == "uLens":
        return ULENS_REACH_DAYS, ULENS_REACH_DAYS
    return lc.MAX_AGE_DAYS[cls], 0.0


def sample_positions(cls: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n ICRS positions (deg) with density ~ sky_weight, by rejection from uniform."""
    a_d, _, a_b, _ = SPATIAL.get(cls, _UNIFORM)
    w_max = 1.0 + a_d + a_b
    accept = sky_integral_deg2(cls) / FULL_SKY_DEG2 / w_max
    chunks, have = [np.empty((2, 0))], 0
    while have < n:
        m = int(1.2 * (n - have) / accept) + 64
        lon = rng.uniform(0.0, 360.0, m)
        lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, m)))
        keep = rng.random(m) * w_max < sky_weight(cls, lon, lat)
        chunks.append(np.stack([lon[keep], lat[keep]]))
        have += int(keep.sum())
    lon, lat = np.concatenate(chunks, axis=1)[:, :n]
    xyz = ICRS_TO_GAL.T @ unit_vectors(lon, lat).T
    ra = np.degrees(np.arctan2(xyz[1], xyz[0])) % 360.0
    return ra, np.degrees(np.arcsin(np.clip(xyz[2], -1, 1)))


@dataclass
class Population:
    """Every simulated source, one row each; ``params[name]`` holds the light-curve
    parameters of class ``name`` and ``local_index`` each source's row there.

    ``t_ref_unix`` is the source's dt = 0 (``simulator.lightcurves``): explosion,
    closest approach or principal outburst/flare for transients, ``t0_unix`` for
    variables (their phases are in their parameters).
    """

    cls: np.ndarray  # int8 index into lightcurves.CLASSES
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    t_ref_unix: np.ndarray
    ref_mag: np.ndarray  # r (AB): peak of transients, mean of variables
    local_index: np.ndarray
    params: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    t0_unix: float = 0.0
    t1_unix: float = 0.0
    density_scale: float = 1.0
    faint_limit: float = 22.5

    @property
    def size(self) -> int:
        return len(self.cls)

    @property
    def class_name(self) -> np.ndarray:
        return np.asarray(CLASSES)[self.cls]

    @property
    def is_transient(self) -> np.ndarray:
        return self.cls < len(TRANSIENTS)

    def counts(self) -> dict[str, int]:
        n = np.bincount(self.cls, minlength=len(CLASSES))
        return {name: int(k) for name, k in zip(CLASSES, n, strict=True)}

    def _per_class(self, source_idx, fn, fill):
        src = np.asarray(source_idx, dtype=np.int64)
        out = np.full(src.shape, fill, dtype=float)
        cls = self.cls[src]
        for k in np.unique(cls):
            sel = cls == k
            name = CLASSES[k]
            out[sel] = fn(name, self.params[name], self.local_index[src[sel]], sel)
        return out

    def peak_unix(self, source_idx) -> np.ndarray:
        """r-band peak time (unix s) of transients (principal event); NaN otherwise."""
        src = np.asarray(source_idx, dtype=np.int64)

        def fn(name, p, rows, sel):
            if name not in TRANSIENTS:
                return np.nan
            return self.t_ref_unix[src[sel]] + lp.peak_time_days(name, p)[rows] * DAY_S
        return self._per_class(src, fn, np.nan)

    def magnitudes(self, source_idx, t_unix, band) -> np.ndarray:
        """AB magnitude of each source at ``t_unix`` (s) in ``band`` (0, 1, 2 or "g",
        "r", "i"), any mix of classes; ``+inf`` where a source gives no flux."""
        src = np.asarray(source_idx, dtype=np.int64)
        src, t, b = np.broadcast_arrays(src, np.asarray(t_unix, dtype=float), _band_index(band))
        dt = (t - self.t_ref_unix[src]) / DAY_S

        def fn(name, p, rows, sel):
            return lc.magnitudes(name, p, rows, dt[sel], b[sel])
        return self._per_class(src, fn, np.inf)

    def baseline_magnitudes(self, source_idx, band) -> np.ndarray:
        """Magnitude of each source's steady counterpart (``lightcurves.baseline_magnitudes``)."""
        src, b = np.broadcast_arrays(np.asarray(source_idx, dtype=np.int64), _band_index(band))

        def fn(name, p, rows, sel):
            return lc.baseline_magnitudes(name, p, rows, b[sel])
        return self._per_class(src, fn, np.inf)

    def select(self, source_idx) -> Population:
        """The given sources (indices or mask), sharing this population's parameters."""
        s = np.asarray(source_idx)
        return Population(self.cls[s], self.ra_deg[s], self.dec_deg[s], self.t_ref_unix[s],
                          self.ref_mag[s], self.local_index[s], self.params, self.t0_unix,
                          self.t1_unix, self.density_scale, self.faint_limit)

    def save(self, path: str | Path) -> None:
        """Write to one ``.npz`` that ``Population.load`` restores exactly (parameters that
        float32 holds exactly, as ``sample_population`` makes them, are stored as such)."""
        arrays = {k: getattr(self, k) for k in ("cls", "ra_deg", "dec_deg", "t_ref_unix",
                                                "ref_mag", "local_index")}
        arrays["meta"] = np.array([self.t0_unix, self.t1_unix, self.density_scale,
                                   self.faint_limit])
        for name, p in self.params.items():
            for key, value in p.items():
                exact32 = value.dtype == np.float64 and np.array_equal(
                    value.astype(np.float32).astype(np.float64), value)
                arrays[f"p::{name}::{key}"] = value.astype(np.float32) if exact32 else value
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Population:
        with np.load(path) as z:
            params: dict[str, dict[str, np.ndarray]] = {}
            for key in z.files:
                if key.startswith("p::"):
                    _, name, pkey = key.split("::")
                    value = z[key]
                    params.setdefault(name, {})[pkey] = (value.astype(np.float64)
                                                         if value.dtype == np.float32 else value)
            t0, t1, scale, faint = (float(v) for v in z["meta"])
            return cls(z["cls"], z["ra_deg"], z["dec_deg"], z["t_ref_unix"], z["ref_mag"],
                       z["local_index"], params, t0, t1, scale, faint)


def _band_index(band) -> np.ndarray:
    b = np.asarray(band)
    if b.dtype.kind in "USO":
        lookup = {name: k for k, name in enumerate(BANDS)}
        return np.vectorize(lookup.__getitem__, otypes=[np.int64])(b)
    return b.astype(np.int64)


def _t_ref(name: str, p: dict, n: int, t0: float, t1: float, rng) -> np.ndarray:
    if name in EVENT_CLASSES:
        before, after = _event_window_days(name)
        return rng.uniform(t0 - before * DAY_S, t1 + after * DAY_S, n)
    if name == "CV":  # uniform phase of the outburst cycle
        return t0 - rng.random(n) * p["p_rec"] * DAY_S
    if name == "Flare":  # flares (+-FLARE_SPAN_DAYS about t_ref) must cover [t0, t1]
        span = lc.FLARE_SPAN_DAYS * DAY_S
        lo, hi = (t1 - span, t0 + span) if t1 - t0 < 2 * span else (t0, t1)
        return rng.uniform(lo, hi, n)
    return np.full(n, t0)


def _visible(name: str, p: dict, t_ref: np.ndarray, t0: float, t1: float,
             faint_limit: float) -> np.ndarray:
    """Events whose r-band light curve is brighter than the limit inside [t0, t1] (every
    event's r light curve is unimodal, so its brightest moment in the run is the peak or
    an end); a lensing event must also brighten by ULENS_MIN_DMAG."""
    rows = np.arange(len(t_ref))
    r = np.ones(len(t_ref), dtype=np.int64)
    t_best = np.clip(lp.peak_time_days(name, p), (t0 - t_ref) / DAY_S, (t1 - t_ref) / DAY_S)
    m = lc.magnitudes(name, p, rows, t_best, r)
    ok = m <= faint_limit
    if name == "uLens":
        ok &= lc.baseline_magnitudes(name, p, rows, r) - m >= ULENS_MIN_DMAG
    return ok


def sample_population(ra_deg, dec_deg, area_deg2, t0_unix: float, t1_unix: float,
                      rng: np.random.Generator, density_scale: float = 1.0,
                      faint_limit: float = 22.5) -> Population:
    """Sources of every class for a run spanning [t0_unix, t1_unix] (s).

    The whole sky is sampled; if ``ra_deg``/``dec_deg`` (field centres, deg) are given,
    only sources inside those fields (squares of ``area_deg2`` each, aligned with
    RA/Dec) are kept. Events that never reach ``faint_limit`` (r) during the run are
    dropped. ``density_scale`` multiplies every rate and density.
    """
    t0, t1 = float(t0_unix), float(t1_unix)
    if t1 < t0:
        raise ValueError("t1_unix must not precede t0_unix")
    parts = []
    params = {}
    for k, name in enumerate(CLASSES):
        n = int(rng.poisson(expected_count(name, t0, t1, density_scale, faint_limit)))
        p = lp.sample_params(name, n, rng, lp.mag_distribution(name, n, rng, faint_limit))
        t_ref = _t_ref(name, p, n, t0, t1, rng)
        ra, dec = sample_positions(name, n, rng)
        keep = (_visible(name, p, t_ref, t0, t1, faint_limit) if name in EVENT_CLASSES
                else np.ones(n, dtype=bool))
        if ra_deg is not None:
            keep &= _in_fields(ra, dec, ra_deg, dec_deg, area_deg2)
        params[name] = {key: _float32_exact(v[keep]) for key, v in p.items()}
        m = int(keep.sum())
        parts.append((np.full(m, k, dtype=np.int8), ra[keep], dec[keep], t_ref[keep],
                      params[name]["ref_mag"], np.arange(m, dtype=np.int64)))
    cols = [np.concatenate([part[j] for part in parts]) for j in range(6)]
    return Population(*cols, params=params, t0_unix=t0, t1_unix=t1,
                      density_scale=float(density_scale), faint_limit=float(faint_limit))


def _float32_exact(values: np.ndarray) -> np.ndarray:
    """float64 values rounded to float32 precision (saved as float32 without loss)."""
    if values.dtype == np.float64:
        return values.astype(np.float32).astype(np.float64)
    return values


def _in_fields(ra, dec, field_ra, field_dec, area_deg2) -> np.ndarray:
    """True for positions inside any of the square fields (deg)."""
    inside = np.zeros(len(ra), dtype=bool)
    if len(ra) == 0 or np.size(field_ra) == 0:
        return inside
    points, _fields = points_in_fields(ra, dec, field_ra, field_dec, math.sqrt(area_deg2))
    inside[points] = True
    return inside
