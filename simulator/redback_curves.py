"""Transient light curves from ``redback``'s analytic physical models: a second generator,
independent of simulator/lightcurves.py, for leave-one-generator-out tests of the
classifier (policies/lightcurve_sets.py, ``make_redback_set``).

Each covered class is a physical model from redback (Sarin et al. 2024, MNRAS 531, 1203)
with parameters drawn from published fits (cited at ``_draw``):

* SNIa, SNIbc: ``arnett`` -- 56Ni heating diffused through homologous ejecta (Arnett
  1982, ApJ 253, 785), a photosphere at v t with a temperature floor (Nicholl et al. 2017,
  ApJ 850, 55) and a blackbody SED.
* SNII: ``shockcooling_morag_and_arnett`` -- shock cooling of a red-supergiant envelope
  (Morag, Sapir & Waxman 2023, MNRAS 522, 2764) plus the 56Ni of Arnett's model. The
  temperature floor near hydrogen recombination (5000-6500 K) keeps the photosphere cool
  and the light curve slowly evolving; it has no sharp fall off a plateau.
* SLSN: ``slsn`` -- a magnetar spinning down inside the ejecta (Nicholl et al. 2017).
* TDE: ``tde_analytical`` -- fallback accretion L ~ t^-5/3 (Rees 1988, Nature 333, 523;
  Phinney 1989) reprocessed through an optically thick envelope, with a hot (1.5-4 x 10^4
  K) temperature floor and a blackbody cut below 3000 A.
* KN: two ``one_component_kilonova_model`` (Metzger 2017, LRR 20, 3) added, a blue
  lanthanide-poor and a red lanthanide-rich component, as in the fits of AT2017gfo by
  Villar et al. 2017 (ApJL 851, L21). The one-zone photosphere is not valid once the
  ejecta turn nebular, so a kilonova gives no flux after ``KN_MAX_REST_DAYS``.

Everything is evaluated offline: ``output_format='flux_density'`` at the effective
frequencies of g, r and i (no sncosmo bandpass or source, which may download), F_nu in
mJy converted to AB magnitudes. Each source is placed at the redshift where its observed
r-band peak has the requested magnitude (Planck18 distances, redback's default); redback
then applies the host-frame time dilation and the K-correction (it evaluates the rest
frame at t / (1 + z) and nu (1 + z)). Each source is evaluated once on a grid of
observer-frame times; ``magnitudes`` interpolates. No host or Milky-Way extinction.

Not covered: variables (RRL, EB, DSCT, LPV, AGN), cataclysmic variables, stellar flares
and microlensing -- redback has no analytic model of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings

import numpy as np

from observatory.taxonomy import TRANSIENTS
from simulator.lightcurves import query_arrays

# Effective wavelengths (A) of SDSS-like g, r, i (Fukugita et al. 1996, AJ 111, 1748;
# Doi et al. 2010, AJ 139, 1628): fluxes are taken at these single frequencies.
BAND_WAVELENGTH_AA = np.array([4770.0, 6230.0, 7630.0])
BAND_NU_HZ = 2.99792458e18 / BAND_WAVELENGTH_AA
AB_ZERO_MJY = 3631.0e3  # the AB zero point, 3631 Jy (Oke & Gunn 1983, ApJ 266, 713)
NO_FLUX = np.inf

# Observer-frame days since explosion on which each source is evaluated: log-spaced
# (steps of 4.5 %) so that a kilonova's first hours and a SLSN's year are both resolved.
GRID_DAYS = np.geomspace(0.02, 700.0, 240)
# A coarse r-band grid for finding the redshift of the requested peak magnitude.
_COARSE_DAYS = np.geomspace(0.2, 500.0, 40)
# A first guess of each class's peak absolute magnitude (r), to start the redshift search.
_TYPICAL_PEAK_ABS_MAG = {"SNIa": -19.2, "SNII": -17.0, "SNIbc": -17.3, "SLSN": -21.0,
                         "TDE": -19.5, "KN": -15.5}
KN_MAX_REST_DAYS = 20.0  # AT2017gfo's photospheric phase (Villar et al. 2017)
_Z_RANGE = (5e-4, 3.0)

_MODEL = {"SNIa": "arnett", "SNIbc": "arnett", "SNII": "shockcooling_morag_and_arnett",
          "SLSN": "slsn", "TDE": "tde_analytical", "KN": "one_component_kilonova_model"}
_MODULE = {"arnett": "supernova_models", "shockcooling_morag_and_arnett": "supernova_models",
           "slsn": "supernova_models", "tde_analytical": "tde_models",
           "one_component_kilonova_model": "kilonova_models"}


def redback_classes() -> tuple[str, ...]:
    """The classes of the taxonomy this generator covers (in taxonomy order)."""
    return tuple(c for c in TRANSIENTS if c in _MODEL)


def check_class(cls: str) -> None:
    if cls not in _MODEL:
        raise ValueError(f"{cls!r}: no redback model (covered: {', '.join(redback_classes())})")


def _u(rng, n, lo, hi):
    return rng.uniform(lo, hi, n)


def _logu(rng, n, lo, hi):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _draw(cls: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Physical parameters of ``n`` sources, in redback's names and units."""
    check_class(cls)
    if cls == "SNIa":
        # 56Ni 0.3-0.9 Msun and ejecta 0.9-1.4 Msun from Arnett-rule fits of normal SNe Ia
        # (Stritzinger et al. 2006, A&A 460, 793; Scalzo et al. 2014, MNRAS 440, 1498);
        # Si II velocities 9,000-13,000 km/s (Wang et al. 2009, ApJL 699, L139); optical
        # opacity ~0.1 cm^2/g, giving B rises of 15-22 d (Firth et al. 2015, MNRAS 446,
        # 3895); gamma-ray opacity 0.025-0.03 (Swartz et al. 1995, ApJ 446, 766).
        mej = _u(rng, n, 0.9, 1.4)
        m_ni = np.minimum(_u(rng, n, 0.3, 0.9), 0.85 * mej)
        return {"mej": mej, "f_nickel": m_ni / mej, "vej": _u(rng, n, 9000.0, 13000.0),
                "kappa": _u(rng, n, 0.08, 0.12), "kappa_gamma": _u(rng, n, 0.025, 0.035),
                "temperature_floor": _u(rng, n, 3500.0, 5500.0)}
    if cls == "SNIbc":
        # Stripped-envelope SNe: ejecta 1-5 Msun, 56Ni 0.03-0.25 Msun, 7,000-13,000
        # km/s, kappa 0.05-0.1 (Drout et al. 2011, ApJ 741, 97; Lyman et al. 2016, MNRAS
        # 457, 328; Taddia et al. 2018, A&A 609, A136); a cooler floor (redder colours).
        mej = _logu(rng, n, 1.0, 5.0)
        m_ni = np.minimum(_u(rng, n, 0.03, 0.25), 0.5 * mej)
        return {"mej": mej, "f_nickel": m_ni / mej, "vej": _u(rng, n, 7000.0, 13000.0),
                "kappa": _u(rng, n, 0.05, 0.1), "kappa_gamma": _u(rng, n, 0.02, 0.035),
                "temperature_floor": _u(rng, n, 3000.0, 4500.0)}
    if cls == "SNII":
        # Red-supergiant progenitors of 400-1000 Rsun (Levesque et al. 2005, ApJ 628,
        # 973) -> radius 2.8-7 x 10^13 cm; ejecta 7-14 Msun with a hydrogen envelope of
        # half or more (Martinez et al. 2022, A&A 660, A41); shock / photospheric speeds
        # 3,000-7,000 km/s (Gutierrez et al. 2017, ApJ 850, 89); f_rho 0.5-1.5 for an
        # n = 3/2 envelope (Sapir & Waxman 2017, ApJ 838, 130); 56Ni 0.008-0.08 Msun,
        # median ~0.03 (Anderson 2019, A&A 628, A7); electron-scattering opacity 0.34;
        # the photosphere floor near hydrogen recombination (Kasen & Woosley 2009, ApJ
        # 703, 2205).
        mej = _u(rng, n, 7.0, 14.0)
        return {"mej": mej, "m_env": mej * _u(rng, n, 0.5, 0.9),
                "radius": _u(rng, n, 2.8, 7.0), "v_shock": _u(rng, n, 3000.0, 7000.0),
                "f_rho": _u(rng, n, 0.5, 1.5), "f_nickel": _logu(rng, n, 0.008, 0.08) / mej,
                "kappa": np.full(n, 0.34), "kappa_gamma": _u(rng, n, 0.025, 0.035),
                "temperature_floor": _u(rng, n, 5000.0, 6500.0)}
    if cls == "SLSN":
        # Magnetar fits of 38 SLSNe-I (Nicholl, Guillochon & Berger 2017, ApJ 850, 55):
        # spin 1.5-5 ms, field 0.2-2 x 10^14 G (orthogonal to the spin: theta = pi/2 is
        # their dipole spin-down), ejecta 2-15 Msun, kappa 0.1-0.2, 6,000-12,000 km/s,
        # floor 5000-8000 K; NS mass 1.4-2.0 Msun.
        return {"p0": _u(rng, n, 1.5, 5.0), "bp": _logu(rng, n, 0.2, 2.0),
                "mass_ns": _u(rng, n, 1.4, 2.0), "theta_pb": np.full(n, 0.5 * math.pi),
                "mej": _logu(rng, n, 2.0, 15.0), "vej": _u(rng, n, 6000.0, 12000.0),
                "kappa": _u(rng, n, 0.1, 0.2), "kappa_gamma": _logu(rng, n, 0.01, 0.5),
                "temperature_floor": _u(rng, n, 5000.0, 8000.0)}
    if cls == "TDE":
        # Fallback luminosity 10^43.5-10^44.8 erg/s when it turns to t^-5/3 at 5-30 d,
        # an envelope of 0.05-1 Msun expanding at 5,000-15,000 km/s (Balmer widths,
        # Arcavi et al. 2014, ApJ 793, 38), a nearly constant 1.5-4 x 10^4 K photosphere
        # and rises of 10-40 d (van Velzen et al. 2021, ApJ 908, 4; Yao et al. 2023,
        # ApJL 955, L6). l0 is the luminosity at 1 s of the t^-5/3 law.
        t0 = _u(rng, n, 5.0, 30.0)
        l_turn = 10 ** _u(rng, n, 43.5, 44.8)
        return {"l0": l_turn * (t0 * 86400.0) ** (5.0 / 3.0), "t_0_turn": t0,
                "mej": _logu(rng, n, 0.05, 1.0), "vej": _u(rng, n, 5000.0, 15000.0),
                "kappa": np.full(n, 0.34), "kappa_gamma": np.full(n, 10.0),
                "temperature_floor": _u(rng, n, 1.5e4, 4.0e4)}
    # KN: Villar et al. 2017: blue 0.01-0.03 Msun at 0.2-0.3 c, kappa 0.5-1; red 0.02-0.06
    # Msun at 0.1-0.15 c, kappa 3-10 cm^2/g; floors 3000-4500 K (4000 K: redback's default).
    return {"mej_blue": _u(rng, n, 0.01, 0.03), "vej_blue": _u(rng, n, 0.2, 0.3),
            "kappa_blue": _u(rng, n, 0.5, 1.0), "mej_red": _u(rng, n, 0.02, 0.06),
            "vej_red": _u(rng, n, 0.1, 0.15), "kappa_red": _u(rng, n, 3.0, 10.0),
            "temperature_floor": _u(rng, n, 3000.0, 4500.0)}


def _components(cls: str, row: dict[str, float]) -> list[dict[str, float]]:
    """The redback keyword arguments of one source, one dict per added component."""
    if cls != "KN":
        return [row]
    return [{"mej": row[f"mej_{c}"], "vej": row[f"vej_{c}"], "kappa": row[f"kappa_{c}"],
             "temperature_floor": row["temperature_floor"]} for c in ("blue", "red")]


@contextlib.contextmanager
def _quiet(logs: bool = False):
    """redback and bilby log at import (``logs``: silence logging meanwhile) and some
    models warn about overflows at early times."""
    previous = logging.root.manager.disable
    if logs:
        logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        if logs:
            logging.disable(previous)


def _model(cls: str):
    name = _MODEL[cls]
    import matplotlib  # lazy: redback imports it anyway

    # redback sets a paper style on import (LaTeX text among it): matplotlib's settings
    # are put back, or every later figure of the process (the night report) needs LaTeX.
    with _quiet(logs=True), matplotlib.rc_context():
        import redback.transient_models as models  # lazy: seconds to import; an extra
    module = getattr(models, _MODULE[name])
    for logger in ("redback", "bilby"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    return getattr(module, name)


def _flux_mjy(fn, cls: str, row: dict[str, float], z: float, t_obs: np.ndarray,
              nu: np.ndarray) -> np.ndarray:
    """F_nu (mJy) at observer-frame days ``t_obs`` (sorted) and frequencies ``nu``."""
    out = np.zeros(t_obs.size)
    ok = t_obs > 0
    if cls == "KN":
        ok &= t_obs / (1.0 + z) <= KN_MAX_REST_DAYS
    if not ok.any():
        return out
    with _quiet():
        for kw in _components(cls, row):
            f = fn(t_obs[ok], z, output_format="flux_density", frequency=nu[ok], **kw)
            out[ok] += np.nan_to_num(np.asarray(f, dtype=float), nan=0.0, posinf=0.0)
    return out


def _ab(f_mjy: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        m = -2.5 * np.log10(f_mjy / AB_ZERO_MJY)
    return np.where(np.isfinite(m) & (f_mjy > 0), m, NO_FLUX)


class _Distances:
    """Planck18 luminosity distance and its inverse on a table (redback's cosmology)."""

    def __init__(self):
        from astropy.cosmology import Planck18  # lazy: 0.9 s to import, only needed here

        self.z = np.geomspace(_Z_RANGE[0], _Z_RANGE[1], 2000)
        self.log_dl = np.log(Planck18.luminosity_distance(self.z).value)

    def dl(self, z: float) -> float:
        return float(np.exp(np.interp(z, self.z, self.log_dl)))

    def z_of(self, dl: float) -> float:
        return float(np.interp(math.log(dl), self.log_dl, self.z))


@functools.cache
def _distances() -> _Distances:
    return _Distances()


def _place(fn, cls, row, peak_mag, dist) -> tuple[float, np.ndarray]:
    """The redshift at which the r-band peak is ``peak_mag`` and the (G, 3) magnitudes
    there. A first guess from the class's typical peak absolute magnitude, fixed-point
    steps on a coarse r grid (the K-correction and the time dilation change with z) until
    one moves the peak by under 0.1 mag (3 at most), then the full grid."""
    dl_mpc = 10 ** ((peak_mag - _TYPICAL_PEAK_ABS_MAG[cls]) / 5.0 - 5.0)
    z = float(np.clip(dist.z_of(dl_mpc), *_Z_RANGE))
    nu_r = np.full(_COARSE_DAYS.size, BAND_NU_HZ[1])
    for _ in range(3):
        m = np.min(_ab(_flux_mjy(fn, cls, row, z, _COARSE_DAYS, nu_r)))
        if not np.isfinite(m):
            raise ValueError(f"{cls}: no r-band flux for {row}")
        z = float(np.clip(dist.z_of(dist.dl(z) * 10 ** ((peak_mag - m) / 5.0)), *_Z_RANGE))
        if abs(peak_mag - m) < 0.1:
            break
    t = np.repeat(GRID_DAYS, 3)  # sorted times, g r i at each (redback's diffusion wants
    nu = np.tile(BAND_NU_HZ, GRID_DAYS.size)  # its times in order)
    return z, _ab(_flux_mjy(fn, cls, row, z, t, nu)).reshape(GRID_DAYS.size, 3)


def sample_params(cls: str, n: int, rng: np.random.Generator,
                  peak_mag: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Parameters of ``n`` sources of ``cls`` and their light curves.

    ``peak_mag``: observed r-band peak (AB) of each source (default uniform 15.5-21.2);
    the source is put at the redshift that gives it. Besides the model's physical
    parameters the dict holds ``z``, ``peak_time`` (observer-frame days from explosion
    to the r peak) and ``grid_mag`` (n, len(GRID_DAYS), 3): g, r, i on ``GRID_DAYS``.
    Deterministic given ``rng``.
    """
    check_class(cls)
    p = _draw(cls, n, rng)
    peak = rng.uniform(15.5, 21.2, n) if peak_mag is None else np.broadcast_to(peak_mag, (n,))
    fn, dist = _model(cls), _distances()
    z = np.empty(n)
    grid = np.empty((n, GRID_DAYS.size, 3))
    for i in range(n):
        row = {k: float(v[i]) for k, v in p.items()}
        z[i], grid[i] = _place(fn, cls, row, float(peak[i]), dist)
    p.update(z=z, grid_mag=grid, peak_time=GRID_DAYS[np.argmin(grid[:, :, 1], axis=1)])
    return p


def peak_time_days(cls: str, params: dict[str, np.ndarray]) -> np.ndarray:
    """Observer-frame days from explosion to the r-band peak."""
    check_class(cls)
    return params["peak_time"]


def magnitudes(cls: str, params: dict[str, np.ndarray], idx: np.ndarray,
               dt_days: np.ndarray, band: np.ndarray) -> np.ndarray:
    """AB magnitude of source ``idx[k]`` at ``dt_days[k]`` (observer-frame days since
    explosion) in band ``band[k]`` (0, 1, 2 = g, r, i), interpolated linearly in log t on
    ``GRID_DAYS``; ``+inf`` before the explosion, off the grid, or where it gives no flux."""
    check_class(cls)
    idx, dt, band = query_arrays(idx, dt_days, band)
    grid = params["grid_mag"]
    inside = (dt >= GRID_DAYS[0]) & (dt <= GRID_DAYS[-1])
    t = np.where(inside, dt, GRID_DAYS[0])
    log_t = np.log(t)
    j = np.clip(np.searchsorted(GRID_DAYS, t), 1, GRID_DAYS.size - 1)
    lo, hi = np.log(GRID_DAYS[j - 1]), np.log(GRID_DAYS[j])
    w = (log_t - lo) / (hi - lo)
    m0, m1 = grid[idx, j - 1, band], grid[idx, j, band]
    ok = inside & np.isfinite(m0) & np.isfinite(m1)
    with np.errstate(invalid="ignore"):
        m = m0 + w * (m1 - m0)
    return np.where(ok, m, NO_FLUX)


def baseline_magnitudes(cls: str, params: dict[str, np.ndarray], idx: np.ndarray,
                        band: np.ndarray) -> np.ndarray:
    """No steady counterpart: every detection of a redback transient is in outburst."""
    check_class(cls)
    return np.full(np.asarray(band).shape, NO_FLUX)
