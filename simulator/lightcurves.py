"""Multi-band (g, r, i; AB mag) light-curve models of the SiTian taxonomy.

Every model is a closed-form function of (per-source parameters, time, band), evaluated
for many (source, time, band) triples at once with numpy: no loop over sources or points.
``sample_params`` draws the parameters (ranges in ``PRIORS``, sources cited beside them);
``magnitudes`` evaluates them. Stochastic behaviour (AGN damped random walk, flare times,
dwarf-nova cycle jitter) is derived from a per-source integer ``seed`` by a counter hash,
so a light curve is a fixed function of its parameters: same inputs, same magnitudes.

Time origin ``dt = 0`` (days) and ``peak_time_days`` (r-band peak after ``dt = 0``):

=====================  ================================  =====================
class                  dt = 0                            r-band peak at dt =
=====================  ================================  =====================
SNIa SNII SNIbc SLSN   explosion (first light)           ``t_rise`` (r rise)
KN                     merger                            ``t_rise`` (< 1 d)
TDE                    3.5 sigma_rise before the peak    3.5 ``sigma_rise``
uLens                  closest approach (Paczynski t0)   0
CV                     peak of the principal outburst    0 (recurs every ~P)
Flare                  peak of the principal flare       0 (others +-1000 d)
RRL EB DSCT LPV AGN    arbitrary epoch (phases drawn)    (not transients)
=====================  ================================  =====================

``ref_mag`` is the r-band peak of transients (of the principal outburst or flare for CV
and Flare, whose quiescent star is ``ref_mag`` + outburst amplitude) and the mean r-band
magnitude (time average of the magnitude) of variables. Explosive transients return
``+inf`` ("no flux") before ``dt = 0``, after ``MAX_AGE_DAYS`` or once 10 mag below peak;
uLens, CV and Flare return their baseline star outside events.
"""

from __future__ import annotations

import math

import numpy as np

from observatory.taxonomy import CLASSES

NO_FLUX = np.inf
FADED_MAG = 10.0  # explosive transients: no flux once this far below peak (mag)

# One-off explosive transients: no flux after this many days since dt = 0.
MAX_AGE_DAYS = {"SNIa": 300.0, "SNII": 400.0, "SNIbc": 250.0, "SLSN": 600.0,
                "TDE": 600.0, "KN": 20.0}
FLARE_SPAN_DAYS = 1000.0  # flares occur only within +-this of the principal flare
FLARE_SLOTS = 60  # at most one flare per slot of 2 * span / slots = 33.3 d


# Transient classes share three shapes: "sn" (rise t^n, smooth two-exponential decline),
# "snii" (plateau) and "tde" (Gaussian rise, power law decline).
SHAPE = {"SNIa": "sn", "SNIbc": "sn", "SLSN": "sn", "KN": "sn", "SNII": "snii", "TDE": "tde"}
TDE_ONSET_SIGMA = 3.5
_TDE_INDEX = 5.0 / 3.0
_AGN_TERMS = 20
_AGN_X_EDGES = np.logspace(-2.0, 2.5, _AGN_TERMS + 1)  # 2 pi f tau at the bin edges
_AGN_SF_BAND = np.array([1.137, 1.0, 0.908])  # SF ~ lambda^-0.479 (MacLeod et al. 2010)
_MASK64 = (1 << 64) - 1


def check_class(cls: str) -> None:
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")


def hash_uniform(seed: np.ndarray, k: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers, a fixed function of (seed, k, stream): the splitmix64
    finaliser (Steele et al. 2014) of a counter, exact on every platform."""
    salt = np.uint64((stream * 0x632BE59BD9B4E019 + 0x9E3779B97F4A7C15) & _MASK64)
    z = (np.asarray(seed, dtype=np.uint64)
         + np.asarray(k, dtype=np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         + salt)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


# Models ------------------------------------------------------------------------------
# Each takes gathered parameters (one row per point), dt (days) and band (0, 1, 2).
# Explosive shapes return (r-band mag below peak, band mag below r peak); the others the
# AB magnitude itself.

def _smooth(phi, s):
    """phi for phi >> s but with zero slope at phi = 0: rounds the light-curve peak."""
    return np.sqrt(phi * phi + s * s) - s


def _pick(band, g, i):
    """Colour for each point's band: g - r, 0, i - r."""
    return np.where(band == 0, g, np.where(band == 2, i, 0.0))


def _rise_dmag(dt, t_rise, n):
    """Rise to peak as L ~ x^n exp(n (1 - x)), x = dt / t_rise: L ~ t^n early (the
    fireball rise, Riess et al. 1999) and zero slope at the peak."""
    x = np.clip(dt / t_rise, 1e-12, 1.0)
    return -2.5 / math.log(10) * n * (np.log(x) + 1.0 - x)


def _colour_sn(p, phi, rho, band):
    """Colours c0 + rate * (phase, rounded at the peak, held after t_sat); the SN Ia
    i-band secondary maximum is a dip in i - r, part of which persists after it."""
    ph = np.where(phi > 0, rho, 0.0)
    g = p["gr0"] + p["gr_rate"] * np.minimum(ph, p["gr_tsat"])
    after = phi > p["bump_t"]
    bump = (np.exp(-0.5 * ((phi - p["bump_t"]) / p["bump_w"]) ** 2)
            * np.where(after, 1.0 - p["bump_keep"], 1.0) + np.where(after, p["bump_keep"], 0.0))
    i = p["ir0"] + p["ir_rate"] * np.minimum(ph, p["ir_tsat"]) - p["bump_amp"] * bump
    return _pick(band, g, i)


def _model_sn(p, dt, band):
    phi = dt - p["t_rise"]
    rho = _smooth(phi, p["s_peak"])
    w = p["w2"]
    with np.errstate(divide="ignore"):
        log_flux = np.logaddexp(np.log1p(-w) - rho / p["tau1"], np.log(w) - rho / p["tau2"])
    decline = -2.5 / math.log(10) * log_flux
    dm = np.where(phi < 0, _rise_dmag(dt, p["t_rise"], p["n_rise"]), decline)
    return dm, dm + _colour_sn(p, phi, rho, band)


def _model_snii(p, dt, band):
    phi = dt - p["t_rise"]
    rho = _smooth(phi, p["s_peak"])
    step = 1.0 / (1.0 + np.exp(np.clip(-(phi - p["t_pt"]) / p["w_drop"], -60.0, 60.0)))
    step0 = 1.0 / (1.0 + np.exp(p["t_pt"] / p["w_drop"]))
    decline = (p["p_plateau"] * np.minimum(rho, p["t_pt"])
               + p["p_tail"] * np.maximum(rho - p["t_pt"], 0.0) + p["drop"] * (step - step0))
    dm = np.where(phi < 0, _rise_dmag(dt, p["t_rise"], p["n_rise"]), decline)
    return dm, dm + _colour_sn(p, phi, rho, band)


def _model_tde(p, dt, band):
    phi = dt - TDE_ONSET_SIGMA * p["sigma_rise"]
    rise = 2.5 / math.log(10) * 0.5 * (phi / p["sigma_rise"]) ** 2
    decline = 2.5 * _TDE_INDEX * np.log10(1.0 + _smooth(phi, p["s_peak"]) / p["t0_pl"])
    dm = np.where(phi < 0, rise, decline)
    return dm, dm + _pick(band, p["gr0"], p["ir0"])


def _ulens_baseline(p, band):
    a0 = _magnification(p["u0"])
    base_r = p["ref_mag"] + 2.5 * np.log10(p["fs_r"] * a0 + 1.0 - p["fs_r"])
    return base_r + _pick(band, p["gr"], p["ir"])


def _magnification(u):
    return (u * u + 2.0) / (u * np.sqrt(u * u + 4.0))


def _model_ulens(p, dt, band):
    u = np.hypot(p["u0"], dt / p["tE"])
    fs = np.where(band == 0, np.minimum(p["fs_r"] * 10 ** p["dfs_g"], 1.0),
                  np.where(band == 2, np.minimum(p["fs_r"] * 10 ** p["dfs_i"], 1.0), p["fs_r"]))
    return _ulens_baseline(p, band) - 2.5 * np.log10(fs * _magnification(u) + 1.0 - fs)


def _cv_excess(p, dt):
    """Outburst r flux over quiescence (units of the quiescent r flux): the brightest of
    the three cycles that can cover dt. Cycle k peaks at k P + jitter (jitter 0 for the
    principal cycle k = 0), with amplitude and plateau length jittered per cycle."""
    per, seed = p["p_rec"], p["seed"]
    k0 = np.floor(dt / per).astype(np.int64)
    best = np.zeros_like(dt)
    for dk in (-1, 0, 1):
        k = k0 + dk
        principal = k == 0
        u_t, u_a, u_d = (hash_uniform(seed, k, s) for s in (1, 2, 3))
        t_k = k * per + np.where(principal, 0.0, (2 * u_t - 1) * p["jit_t"] * per)
        amp = p["amp"] * np.where(principal, 1.0, 1.0 - p["jit_amp"] * u_a)
        top = p["d_top"] * np.where(principal, 1.0, 0.6 + 0.8 * u_d)
        top = np.minimum(top, 0.3 * per)
        x = dt - t_k
        drop = np.where(x < 0, -x * p["rise_rate"],
                        p["top_slope"] * np.minimum(x, top)
                        + p["decay_rate"] * np.maximum(x - top, 0.0))
        best = np.maximum(best, 10 ** (0.4 * (amp - np.minimum(drop, amp))) - 1.0)
    return best


def _two_component(q_r, q_colour, o_colour, excess, band):
    """Magnitude of quiescent light plus an outburst/flare component; ``excess`` is the
    component's r flux in units of the quiescent r flux."""
    q_c = _pick(band, q_colour[0], q_colour[1])
    o_c = _pick(band, o_colour[0], o_colour[1])
    return q_r + q_c - 2.5 * np.log10(1.0 + excess * 10 ** (-0.4 * (o_c - q_c)))


def _model_cv(p, dt, band):
    q_r = p["ref_mag"] + p["amp"]
    return _two_component(q_r, (p["gr_q"], p["ir_q"]), (p["gr_o"], p["ir_o"]),
                          _cv_excess(p, dt), band)


def _davenport(x):
    """Davenport et al. (2014) flare template, x = (t - t_peak) / t_half (FWHM)."""
    rise = 1 + 1.941 * x - 0.175 * x**2 - 2.246 * x**3 - 1.125 * x**4
    decay = 0.6890 * np.exp(-1.600 * np.maximum(x, 0)) + 0.3030 * np.exp(-0.2783 * np.maximum(x, 0))
    return np.where(x < -1, 0.0, np.where(x < 0, np.maximum(rise, 0.0), decay))


def _flare_excess(p, dt):
    """Sum of flares in the slot holding dt and its two neighbours (flares last < 1 d).
    Slot j spans [-span + j w, -span + (j+1) w); it holds a flare with probability
    rate * w, at a hashed time, with a power-law amplitude above a_min = amin_frac a0;
    the principal flare (amplitude a0, at dt = 0) replaces the hashed one of slot K/2."""
    width = 2 * FLARE_SPAN_DAYS / FLARE_SLOTS
    j0 = np.floor((dt + FLARE_SPAN_DAYS) / width).astype(np.int64)
    seed = p["seed"]
    total = np.zeros_like(dt)
    for dj in (-1, 0, 1):
        j = j0 + dj
        valid = (j >= 0) & (j < FLARE_SLOTS)
        principal = j == FLARE_SLOTS // 2
        u_on, u_t, u_a, u_w = (hash_uniform(seed, j, s) for s in (11, 12, 13, 14))
        on = valid & (principal | (u_on < p["rate"] * width))
        # Hashed flares keep 1 d clear of their slot's end, so of the principal flare.
        t_j = np.where(principal, 0.0, -FLARE_SPAN_DAYS + j * width + u_t * (width - 1.0))
        a_min = p["amin_frac"] * p["a0"]
        a_j = np.minimum(a_min * (1.0 - u_a) ** (-1.0 / (p["alpha"] - 1.0)), 100 * a_min)
        a_j = np.where(principal, p["a0"], a_j)
        half = p["t_half0"] * np.where(principal, 1.0, 0.5 + u_w)
        total += np.where(on, a_j * _davenport((dt - t_j) / half), 0.0)
    return total


def _model_flare(p, dt, band):
    q_r = p["ref_mag"] + 2.5 * np.log10(1.0 + p["a0"])
    return _two_component(q_r, (p["gr_q"], p["ir_q"]), (p["gr_f"], p["ir_f"]),
                          _flare_excess(p, dt), band)


def _triangle(phase, rise, n_harm, n_max=8):
    """Fourier series (first ``n_harm`` terms) of a unit triangle wave: 0 at phase 0,
    rising to 1 at ``rise``, back to 0 at phase 1; a sawtooth for small ``rise``."""
    out = np.full(phase.shape, 0.5)
    scale = 1.0 / (2 * math.pi**2 * rise * (1 - rise))
    for n in range(1, n_max + 1):
        term = scale / n**2 * (np.cos(2 * math.pi * n * (phase - rise))
                               - np.cos(2 * math.pi * n * phase))
        out += np.where(n <= n_harm, term, 0.0)
    return out


def _model_pulsator(p, dt, band):
    cycles = dt / p["period"]
    shape = _triangle((cycles + p["phase0"]) % 1.0, p["rise_frac"], p["n_harm"]) - 0.5
    shape = shape + 0.5 * p["amp2"] * np.sin(
        2 * math.pi * (cycles / p["p2_ratio"] + p["phase2"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        mod = np.where(p["mod_ratio"] > 0, p["mod_depth"] * np.sin(
            2 * math.pi * (cycles / p["mod_ratio"] + p["mod_phase"])), 0.0)
    amp = p["amp_g"] * np.where(band == 0, 1.0, np.where(band == 2, p["i_ratio"],
                                                         p["r_ratio"]))
    return p["ref_mag"] + _pick(band, p["gr"], p["ir"]) - amp * (1.0 + mod) * shape


def eb_dmag(p, phase, depth_scale):
    """Magnitude below out-of-eclipse light: two Gaussian eclipses (phases 0 and 0.5 +
    ecc_shift) and ellipsoidal variation, minima at both conjunctions."""
    def gauss(mu):
        d = phase - mu
        d = d - np.round(d)
        return np.exp(-0.5 * (d / p["sigma"]) ** 2)

    d1 = p["d1"] * depth_scale
    f1 = 1 - 10 ** (-0.4 * d1)
    f2 = 1 - 10 ** (-0.4 * d1 * p["d2_ratio"])
    fe = 1 - 10 ** (-0.4 * p["ell"])
    flux = (1 - f1 * gauss(0.0) - f2 * gauss(0.5 + p["ecc_shift"])
            - fe * 0.5 * (1 + np.cos(4 * math.pi * phase)))
    return -2.5 * np.log10(np.maximum(flux, 1e-6))


def _model_eb(p, dt, band):
    phase = (dt / p["period"] + p["phase0"]) % 1.0
    scale = np.where(band == 0, p["g_depth"], np.where(band == 2, p["i_depth"], 1.0))
    dm = eb_dmag(p, phase, scale)
    return p["ref_mag"] - p["mag_offset"] + _pick(band, p["gr"], p["ir"]) + dm


def _model_agn(p, dt, band):
    """DRW light curve as a sum of sinusoids, one per log-spaced frequency bin, carrying
    the bin's share of the DRW power spectrum PSD ~ 1 / (1 + (2 pi f tau)^2); variance
    SF_inf^2 / 2. Frequencies (inside the bin) and phases come from the source's seed."""
    sigma2 = 0.5 * p["sf_inf"] ** 2
    x = np.zeros_like(dt)
    for j in range(_AGN_TERMS):
        lo, hi = _AGN_X_EDGES[j], _AGN_X_EDGES[j + 1]
        power = (2 / math.pi) * (math.atan(hi) - math.atan(lo))
        omega_tau = lo * (hi / lo) ** hash_uniform(p["seed"], np.full(dt.shape, j), 21)
        phase = 2 * math.pi * hash_uniform(p["seed"], np.full(dt.shape, j), 22)
        x += math.sqrt(2 * power) * np.cos(omega_tau * dt / p["tau"] + phase)
    k = _AGN_SF_BAND[band]
    return p["ref_mag"] + _pick(band, p["gr"], p["ir"]) + k * np.sqrt(sigma2) * x


def _explosive(shape_fn, cls):
    def model(p, dt, band):
        dm_r, dm = shape_fn(p, dt, band)
        gone = (dt <= 0) | (dt > MAX_AGE_DAYS[cls]) | (dm_r > FADED_MAG)
        return np.where(gone, NO_FLUX, p["ref_mag"] + dm)
    return model


_MODELS = {"SNIa": _explosive(_model_sn, "SNIa"), "SNIbc": _explosive(_model_sn, "SNIbc"),
           "SLSN": _explosive(_model_sn, "SLSN"), "KN": _explosive(_model_sn, "KN"),
           "SNII": _explosive(_model_snii, "SNII"), "TDE": _explosive(_model_tde, "TDE"),
           "uLens": _model_ulens, "CV": _model_cv, "Flare": _model_flare,
           "RRL": _model_pulsator, "DSCT": _model_pulsator, "LPV": _model_pulsator,
           "EB": _model_eb, "AGN": _model_agn}


def _gather(params, idx):
    return {k: v[idx] for k, v in params.items() if v.ndim == 1}


def query_arrays(idx, dt_days, band) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A magnitude query's source indices, days and bands as arrays of one shape (a
    ValueError otherwise); shared by every light-curve generator."""
    idx = np.asarray(idx, dtype=np.int64)
    dt = np.asarray(dt_days, dtype=float)
    band = np.asarray(band, dtype=np.int64)
    if not idx.shape == dt.shape == band.shape:
        raise ValueError("idx, dt_days and band must have the same shape")
    return idx, dt, band


def magnitudes(cls: str, params: dict[str, np.ndarray], idx: np.ndarray,
               dt_days: np.ndarray, band: np.ndarray) -> np.ndarray:
    """AB magnitude of source ``idx[k]`` at ``dt_days[k]`` (days since its dt = 0) in band
    ``band[k]`` (0, 1, 2 = g, r, i); ``+inf`` where it gives no flux. 1-D, equal length."""
    check_class(cls)
    idx, dt, band = query_arrays(idx, dt_days, band)
    if idx.size == 0:
        return np.empty(0)
    return np.asarray(_MODELS[cls](_gather(params, idx), dt, band), dtype=float)


def baseline_magnitudes(cls: str, params: dict[str, np.ndarray], idx: np.ndarray,
                        band: np.ndarray) -> np.ndarray:
    """Magnitude of the source's steady counterpart (what a reference image holds):
    ``+inf`` for explosive transients, the unlensed star for uLens, the quiescent star
    for CV and Flare, the mean magnitude for variables."""
    check_class(cls)
    p = _gather(params, np.asarray(idx, dtype=np.int64))
    band = np.asarray(band, dtype=np.int64)
    if cls in SHAPE:
        return np.full(band.shape, NO_FLUX)
    if cls == "uLens":
        return _ulens_baseline(p, band)
    if cls == "CV":
        return p["ref_mag"] + p["amp"] + _pick(band, p["gr_q"], p["ir_q"])
    if cls == "Flare":
        return p["ref_mag"] + 2.5 * np.log10(1.0 + p["a0"]) + _pick(band, p["gr_q"], p["ir_q"])
    return p["ref_mag"] + _pick(band, p["gr"], p["ir"])
