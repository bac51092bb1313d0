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

from observatory.taxonomy import CLASSES, PERIODIC, TRANSIENTS

NO_FLUX = np.inf
FADED_MAG = 10.0  # explosive transients: no flux once this far below peak (mag)

# One-off explosive transients: no flux after this many days since dt = 0.
MAX_AGE_DAYS = {"SNIa": 300.0, "SNII": 400.0, "SNIbc": 250.0, "SLSN": 600.0,
                "TDE": 600.0, "KN": 20.0}
FLARE_SPAN_DAYS = 1000.0  # flares occur only within +-this of the principal flare
FLARE_SLOTS = 60  # at most one flare per slot of 2 * span / slots = 33.3 d

# Apparent ref-mag counts N(<m) ~ 10^(slope m) between BRIGHT_MAG and the faint limit.
# Euclidean (0.6) for extragalactic transients; flatter for Galactic populations seen
# through the disk / halo edge (0.2-0.3) and for halo RR Lyrae at 60-100 kpc, whose
# density falls as r^-3..-3.5 (slope ~0.1; Sesar et al. 2010, ApJ 708, 717); quasar
# counts fainter than r ~ 19 rise by ~0.3 dex/mag (Palanque-Delabrouille et al. 2016).
MAG_SLOPE = {"SNIa": 0.6, "SNII": 0.6, "SNIbc": 0.6, "SLSN": 0.6, "TDE": 0.6, "KN": 0.6,
             "CV": 0.3, "Flare": 0.3, "uLens": 0.3, "RRL": 0.1, "EB": 0.25, "DSCT": 0.25,
             "LPV": 0.2, "AGN": 0.3}
BRIGHT_MAG = {"SNIa": 14.0, "SNII": 14.5, "SNIbc": 15.0, "SLSN": 16.5, "TDE": 16.0,
              "KN": 16.5, "CV": 12.0, "Flare": 12.0, "uLens": 13.0, "RRL": 12.0, "EB": 12.0,
              "DSCT": 12.0, "LPV": 10.0, "AGN": 15.0}

_U, _LOG, _LOGN = "u", "log", "lognorm"  # uniform(lo, hi); log-uniform; 10^N(lo, hi) dex

# Parameter priors per class: a list of (fraction, {name: (kind, a, b)}) subtypes with
# identical keys. Magnitudes and colours are AB; colours "gr" = g - r, "ir" = i - r.
_SN_NO_BUMP = {"bump_amp": (_U, 0.0, 0.0), "bump_t": (_U, 1.0, 1.0), "bump_w": (_U, 1.0, 1.0),
               "bump_keep": (_U, 0.0, 0.0)}
PRIORS: dict[str, list[tuple[float, dict[str, tuple[str, float, float]]]]] = {
    # Rise t^n (Firth et al. 2015, MNRAS 446, 3895: n = 2.4, B rise 16-20 d; Miller et al.
    # 2020, ApJ 902, 47); two-exponential decline giving dm15(g) 0.65-1.45; g-r from -0.1
    # at peak reddening ~0.04 mag/d for a month; i-band secondary maximum at +22-32 d
    # (Folatelli et al. 2010, AJ 139, 120; Dhawan et al. 2015, MNRAS 448, 1345).
    "SNIa": [(1.0, {
        "t_rise": (_U, 15.0, 21.0), "n_rise": (_U, 1.8, 3.0), "s_peak": (_U, 2.0, 4.0),
        "tau1": (_U, 13.0, 22.0), "w2": (_U, 0.15, 0.35), "tau2": (_U, 40.0, 60.0),
        "gr0": (_U, -0.2, 0.05), "gr_rate": (_U, 0.02, 0.04), "gr_tsat": (_U, 30.0, 40.0),
        "ir0": (_U, 0.35, 0.65), "ir_rate": (_U, 0.005, 0.015), "ir_tsat": (_U, 10, 15),
        "bump_amp": (_U, 0.5, 0.9), "bump_t": (_U, 24.0, 32.0), "bump_w": (_U, 5.0, 8.0),
        "bump_keep": (_U, 0.4, 0.7)})],
    # Stripped envelope: rise 10-20 d, faster decline, redder (Taddia et al. 2015, A&A
    # 574, A60; Drout et al. 2011, ApJ 741, 97; Perley et al. 2020, ApJ 904, 35).
    "SNIbc": [(1.0, {
        "t_rise": (_U, 10.0, 20.0), "n_rise": (_U, 1.5, 2.5), "s_peak": (_U, 2.0, 5.0),
        "tau1": (_U, 10.0, 20.0), "w2": (_U, 0.15, 0.35), "tau2": (_U, 50.0, 90.0),
        "gr0": (_U, 0.1, 0.6), "gr_rate": (_U, 0.02, 0.04), "gr_tsat": (_U, 20.0, 30.0),
        "ir0": (_U, -0.2, 0.15), "ir_rate": (_U, -0.012, -0.004),
        "ir_tsat": (_U, 20.0, 40.0), **_SN_NO_BUMP})],
    # SLSN-I: rise 20-60 d, decline 0.01-0.04 mag/d (tau1 27-110 d), blue at peak and
    # slowly reddening (Nicholl et al. 2017, ApJ 850, 55; De Cia et al. 2018, ApJ 860,
    # 100; Chen et al. 2023, ApJ 943, 41).
    "SLSN": [(1.0, {
        "t_rise": (_U, 20.0, 60.0), "n_rise": (_U, 1.5, 2.5), "s_peak": (_U, 8.0, 15.0),
        "tau1": (_LOG, 27.0, 110.0), "w2": (_U, 0.0, 0.0), "tau2": (_U, 100.0, 100.0),
        "gr0": (_U, -0.4, 0.0), "gr_rate": (_U, 0.004, 0.012), "gr_tsat": (_U, 60, 100),
        "ir0": (_U, 0.0, 0.3), "ir_rate": (_U, -0.006, -0.002), "ir_tsat": (_U, 60, 100),
        **_SN_NO_BUMP})],
    # AT2017gfo-like: peak < 1 d after merger, r fades ~0.7 mag/d, g faster (g-r
    # reddening 0.35-0.6 mag/d), i slower (Villar et al. 2017, ApJL 851, L21;
    # Cowperthwaite et al. 2017, ApJL 848, L17; Kasen et al. 2017, Nature 551, 80).
    "KN": [(1.0, {
        "t_rise": (_U, 0.4, 0.9), "n_rise": (_U, 1.0, 2.0), "s_peak": (_U, 0.15, 0.3),
        "tau1": (_U, 0.7, 1.1), "w2": (_U, 0.1, 0.25), "tau2": (_U, 2.5, 5.0),
        "gr0": (_U, -0.3, 0.1), "gr_rate": (_U, 0.35, 0.6), "gr_tsat": (_U, 3.0, 5.0),
        "ir0": (_U, 0.0, 0.3), "ir_rate": (_U, -0.35, -0.15), "ir_tsat": (_U, 3.0, 5.0),
        **_SN_NO_BUMP})],
    # SN II(P/L): rise 5-12 d (Gall et al. 2015, A&A 582, A3), plateau slope 0-2
    # mag/100 d and length 50-110 d after peak (Anderson et al. 2014, ApJ 786, 67), drop
    # of 1-2.5 mag as a Fermi-Dirac step (Olivares et al. 2010, ApJ 715, 833; Valenti
    # et al. 2016, MNRAS 459, 3939), then the 56Co tail (~0.01 mag/d).
    "SNII": [(1.0, {
        "t_rise": (_U, 5.0, 12.0), "n_rise": (_U, 1.2, 2.0), "s_peak": (_U, 2.0, 5.0),
        "p_plateau": (_U, 0.0, 0.02), "t_pt": (_U, 50.0, 110.0), "drop": (_U, 1.0, 2.5),
        "w_drop": (_U, 2.0, 5.0), "p_tail": (_U, 0.008, 0.015),
        "gr0": (_U, -0.2, 0.1), "gr_rate": (_U, 0.015, 0.03), "gr_tsat": (_U, 40.0, 60.0),
        "ir0": (_U, 0.0, 0.25), "ir_rate": (_U, -0.01, -0.004),
        "ir_tsat": (_U, 40.0, 70.0), **_SN_NO_BUMP})],
    # TDE: Gaussian rise, t^-5/3 power-law decline, constant blue colour (van Velzen et
    # al. 2021, ApJ 908, 4; Yao et al. 2023, ApJL 955, L6).
    "TDE": [(1.0, {
        "sigma_rise": (_LOG, 6.0, 30.0), "t0_pl": (_LOG, 20.0, 150.0),
        "s_peak": (_U, 2.0, 5.0), "gr0": (_U, -0.4, 0.0), "ir0": (_U, 0.1, 0.4)})],
    # Point-source point-lens magnification (Paczynski 1986, ApJ 304, 1); tE log-normal
    # about 20 d (Mroz et al. 2019, ApJS 244, 29), source flux fraction fs 0.1-1, source
    # colours differing from the blend by +-0.15 dex in flux.
    "uLens": [(1.0, {
        "u0": (_U, 0.01, 1.0), "tE": (_LOGN, 20.0, 0.35), "fs_r": (_U, 0.1, 1.0),
        "dfs_g": (_U, -0.15, 0.15), "dfs_i": (_U, -0.15, 0.15),
        "gr": (_U, 0.5, 1.4), "ir": (_U, -0.8, -0.3)})],
    # Dwarf novae: amplitude 2-6 mag, recurrence 10-300 d, outbursts of 2-20 d (Warner
    # 1995, Cataclysmic Variable Stars; Coppejans et al. 2016, MNRAS 456, 4441), rise
    # 1-3 mag/d, decline 0.3-1 mag/d (Bailey 1975), bluer in outburst.
    "CV": [(1.0, {
        "amp": (_U, 2.0, 6.0), "p_rec": (_LOG, 10.0, 300.0), "d_top": (_LOG, 1.0, 15.0),
        "rise_rate": (_U, 1.0, 3.0), "decay_rate": (_U, 0.3, 1.0),
        "top_slope": (_U, 0.02, 0.1), "jit_t": (_U, 0.05, 0.15), "jit_amp": (_U, 0.0, 0.3),
        "gr_q": (_U, 0.1, 0.8), "ir_q": (_U, -0.5, 0.0),
        "gr_o": (_U, -0.15, 0.05), "ir_o": (_U, 0.0, 0.25)})],
    # M-dwarf flares: Davenport et al. 2014 (ApJ 797, 122) template, FWHM 2-30 min,
    # power-law flare-amplitude distribution dN/da ~ a^-alpha, alpha 1.6-2.2 (Hawley et
    # al. 2014, ApJ 797, 121); ~1e4 K flare on a 3000 K star: contrast largest in g
    # (Kowalski et al. 2009, AJ 138, 633; Covey et al. 2007 for M-dwarf colours).
    "Flare": [(1.0, {
        "a0": (_LOG, 0.2, 10.0), "t_half0": (_LOG, 0.0014, 0.021),
        "rate": (_LOG, 0.005, 0.05), "amin_frac": (_U, 0.1, 0.5), "alpha": (_U, 1.6, 2.2),
        "gr_q": (_U, 1.1, 1.6), "ir_q": (_U, -2.0, -0.6),
        "gr_f": (_U, -0.4, -0.1), "ir_f": (_U, 0.1, 0.35)})],
    # RR Lyrae: RRab 70 % (P 0.45-0.8 d, sawtooth, rise 12-20 % of the cycle, Bailey
    # relation amp_g ~ 1.15 - 1.8 (P - 0.5)), RRc 30 % (P 0.25-0.42 d, near-sinusoidal);
    # amplitude ratios r/g 0.72-0.80, i/g 0.58-0.68 (Sesar et al. 2010, ApJ 708, 717).
    "RRL": [(0.7, {
        "period": (_U, 0.45, 0.8), "amp_g": (_U, 0.5, 1.2), "rise_frac": (_U, 0.12, 0.2),
        "n_harm": (_U, 8, 8), "p2_ratio": (_U, 1.0, 1.0), "amp2": (_U, 0.0, 0.0),
        "mod_ratio": (_U, 0.0, 0.0), "mod_depth": (_U, 0.0, 0.0),
        "r_ratio": (_U, 0.72, 0.8), "i_ratio": (_U, 0.58, 0.68),
        "gr": (_U, 0.1, 0.35), "ir": (_U, -0.15, 0.0)}),
            (0.3, {
        "period": (_U, 0.25, 0.42), "amp_g": (_U, 0.3, 0.5), "rise_frac": (_U, 0.35, 0.45),
        "n_harm": (_U, 3, 3), "p2_ratio": (_U, 1.0, 1.0), "amp2": (_U, 0.0, 0.0),
        "mod_ratio": (_U, 0.0, 0.0), "mod_depth": (_U, 0.0, 0.0),
        "r_ratio": (_U, 0.72, 0.8), "i_ratio": (_U, 0.58, 0.68),
        "gr": (_U, 0.0, 0.25), "ir": (_U, -0.15, 0.0)})],
    # Delta Scuti: P 0.02-0.25 d (Chen et al. 2020, ApJS 249, 18); half high-amplitude
    # (HADS, 0.2-0.6 mag in g, asymmetric; 30 % double-mode with P1/P0 = 0.773, Breger
    # 2000, ASPC 210, 3), half low-amplitude (0.02-0.2 mag).
    "DSCT": [(0.5, {
        "period": (_LOG, 0.02, 0.25), "amp_g": (_U, 0.2, 0.6), "rise_frac": (_U, 0.3, 0.45),
        "n_harm": (_U, 4, 4), "p2_ratio": (_U, 0.773, 0.773), "amp2": (_U, 0.0, 0.5),
        "mod_ratio": (_U, 0.0, 0.0), "mod_depth": (_U, 0.0, 0.0),
        "r_ratio": (_U, 0.75, 0.85), "i_ratio": (_U, 0.6, 0.7),
        "gr": (_U, -0.1, 0.3), "ir": (_U, -0.2, 0.0)}),
             (0.5, {
        "period": (_LOG, 0.02, 0.25), "amp_g": (_LOG, 0.02, 0.2), "rise_frac": (_U, 0.4, 0.5),
        "n_harm": (_U, 2, 2), "p2_ratio": (_U, 0.773, 0.773), "amp2": (_U, 0.0, 0.0),
        "mod_ratio": (_U, 0.0, 0.0), "mod_depth": (_U, 0.0, 0.0),
        "r_ratio": (_U, 0.75, 0.85), "i_ratio": (_U, 0.6, 0.7),
        "gr": (_U, -0.1, 0.3), "ir": (_U, -0.2, 0.0)})],
    # Long-period variables: Miras 30 % (P log-normal about 300 d within 100-500 d, g
    # amplitude 2.5-6 mag, cycle-to-cycle amplitude modulation), semiregulars 70 % (P
    # 20-200 d, 0.2-2 mag, a second mode at 0.5-0.7 P); very red (Soszynski et al. 2009,
    # AcA 59, 239; Chen et al. 2020; Mattei 1997, JAAVSO 25, 57).
    "LPV": [(0.3, {
        "period": (_LOGN, 300.0, 0.12), "amp_g": (_U, 2.5, 6.0), "rise_frac": (_U, 0.35, 0.5),
        "n_harm": (_U, 3, 3), "p2_ratio": (_U, 1.0, 1.0), "amp2": (_U, 0.0, 0.0),
        "mod_ratio": (_U, 5.0, 15.0), "mod_depth": (_U, 0.0, 0.15),
        "r_ratio": (_U, 0.6, 0.8), "i_ratio": (_U, 0.35, 0.55),
        "gr": (_U, 1.4, 2.5), "ir": (_U, -3.0, -1.2)}),
            (0.7, {
        "period": (_LOG, 20.0, 200.0), "amp_g": (_U, 0.2, 2.0), "rise_frac": (_U, 0.4, 0.5),
        "n_harm": (_U, 2, 2), "p2_ratio": (_U, 0.5, 0.7), "amp2": (_U, 0.1, 0.5),
        "mod_ratio": (_U, 5.0, 15.0), "mod_depth": (_U, 0.0, 0.2),
        "r_ratio": (_U, 0.6, 0.8), "i_ratio": (_U, 0.35, 0.55),
        "gr": (_U, 1.2, 2.0), "ir": (_U, -1.8, -0.8)})],
    # Eclipsing binaries as two Gaussian eclipses plus an ellipsoidal cosine (Mowlavi et
    # al. 2017, A&A 606, A92): detached EA 50 % (P 0.5-10 d, depths 0.05-1 mag, narrow,
    # 30 % eccentric), contact EW 50 % (P 0.25-0.6 d, wide near-equal minima).
    "EB": [(0.5, {
        "period": (_LOG, 0.5, 10.0), "d1": (_U, 0.05, 1.0), "d2_ratio": (_U, 0.05, 0.8),
        "sigma": (_U, 0.01, 0.04), "ell": (_U, 0.0, 0.03), "ecc_shift": (_U, -0.05, 0.05),
        "g_depth": (_U, 1.0, 1.15), "i_depth": (_U, 0.88, 1.0),
        "gr": (_U, 0.2, 0.8), "ir": (_U, -0.3, -0.05)}),
           (0.5, {
        "period": (_U, 0.25, 0.6), "d1": (_U, 0.1, 0.6), "d2_ratio": (_U, 0.7, 1.0),
        "sigma": (_U, 0.08, 0.13), "ell": (_U, 0.03, 0.15), "ecc_shift": (_U, 0.0, 0.0),
        "g_depth": (_U, 1.0, 1.1), "i_depth": (_U, 0.9, 1.0),
        "gr": (_U, 0.3, 0.9), "ir": (_U, -0.3, -0.05)})],
    # Damped random walk: rest-frame tau 100-1000 d at z 0.2-2.5, SF_inf 0.1-0.3 mag in
    # r, SF ~ lambda^-0.48 so bluer when brighter (MacLeod et al. 2010, ApJ 721, 1014;
    # Kelly et al. 2009, ApJ 698, 895).
    "AGN": [(1.0, {
        "tau_rest": (_LOG, 100.0, 1000.0), "z": (_U, 0.2, 2.5), "sf_inf": (_U, 0.1, 0.3),
        "gr": (_U, 0.0, 0.4), "ir": (_U, -0.3, 0.1)})],
}

# Transient classes share three shapes: "sn" (rise t^n, smooth two-exponential decline),
# "snii" (plateau) and "tde" (Gaussian rise, power law decline).
_SHAPE = {"SNIa": "sn", "SNIbc": "sn", "SLSN": "sn", "KN": "sn", "SNII": "snii", "TDE": "tde"}
_TDE_ONSET_SIGMA = 3.5
_TDE_INDEX = 5.0 / 3.0
_AGN_TERMS = 20
_AGN_X_EDGES = np.logspace(-2.0, 2.5, _AGN_TERMS + 1)  # 2 pi f tau at the bin edges
_AGN_SF_BAND = np.array([1.137, 1.0, 0.908])  # SF ~ lambda^-0.479 (MacLeod et al. 2010)
_MASK64 = (1 << 64) - 1


def _check_class(cls: str) -> None:
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")


def _draw(rng: np.random.Generator, n: int, spec: tuple[str, float, float]) -> np.ndarray:
    kind, a, b = spec
    if kind == _U:
        return rng.uniform(a, b, n)
    if kind == _LOG:
        return np.exp(rng.uniform(math.log(a), math.log(b), n))
    return 10 ** (math.log10(a) + b * rng.standard_normal(n))


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


def mag_distribution(cls: str, n: int, rng: np.random.Generator,
                     faint_limit: float = 23.0) -> np.ndarray:
    """``n`` apparent ref-mag draws (r, AB) with N(<m) ~ 10^(MAG_SLOPE m) between
    ``BRIGHT_MAG[cls]`` and ``faint_limit`` (by inverse transform)."""
    _check_class(cls)
    a, m0 = MAG_SLOPE[cls], BRIGHT_MAG[cls]
    span = 10 ** (a * max(faint_limit - m0, 0.0)) - 1.0
    return m0 + np.log10(1.0 + rng.random(n) * span) / a


def count_ratio(cls: str, faint_limit: float, reference: float = 21.0) -> float:
    """N(<faint_limit) / N(<reference) under ``mag_distribution``."""
    a, m0 = MAG_SLOPE[cls], BRIGHT_MAG[cls]
    return (10 ** (a * (faint_limit - m0)) - 1) / (10 ** (a * (reference - m0)) - 1)


def sample_params(cls: str, n: int, rng: np.random.Generator,
                  peak_mag: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Parameters of ``n`` sources of class ``cls``, each an array of length ``n``.

    ``ref_mag`` (r, AB; peak for transients, mean for variables) is ``peak_mag`` when
    given, else drawn from ``mag_distribution``. Periodic variables carry ``period``
    (days), stochastic classes (CV, Flare, AGN) a uint64 ``seed``.
    """
    _check_class(cls)
    subtypes = PRIORS[cls]
    fractions = np.array([f for f, _ in subtypes])
    sub = rng.choice(len(subtypes), n, p=fractions / fractions.sum())
    p = {}
    for name in subtypes[0][1]:
        draws = [_draw(rng, n, spec[name]) for _, spec in subtypes]
        p[name] = np.choose(sub, draws) if len(draws) > 1 else draws[0]
    p["subtype"] = sub.astype(np.int8)
    ref = mag_distribution(cls, n, rng) if peak_mag is None else peak_mag
    p["ref_mag"] = np.broadcast_to(np.asarray(ref, dtype=float), (n,)).copy()
    if cls in ("RRL", "EB", "DSCT", "LPV"):
        p["phase0"] = rng.random(n)
    if cls in ("CV", "Flare", "AGN"):
        p["seed"] = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    _DERIVE.get(cls, lambda p, rng: None)(p, rng)
    return p


def _derive_ulens(p, rng):
    p["tE"] = np.clip(p["tE"], 5.0, 200.0)


def _derive_cv(p, rng):
    # Keep each outburst inside its cycle: rise <= 0.2 P, top <= 0.3 P, decay <= 0.5 P.
    per = p["p_rec"]
    p["d_top"] = np.minimum(p["d_top"], 0.3 * per)
    p["rise_rate"] = np.maximum(p["rise_rate"], p["amp"] / (0.2 * per))
    p["decay_rate"] = np.maximum(p["decay_rate"], 2.0 * p["amp"] / per)
    p["top_slope"] = np.minimum(p["top_slope"], 0.3 * p["amp"] / p["d_top"])


def _derive_rrl(p, rng):
    ab = p["subtype"] == 0  # Bailey relation with 0.1 mag scatter
    bailey = 1.15 - 1.8 * (p["period"] - 0.5) + rng.normal(0, 0.1, p["period"].size)
    p["amp_g"] = np.where(ab, np.clip(bailey, 0.5, 1.2), p["amp_g"])
    _pulsator_phases(p, rng)


def _pulsator_phases(p, rng):
    p["phase2"] = rng.random(p["period"].size)
    p["mod_phase"] = rng.random(p["period"].size)


def _derive_lpv(p, rng):
    mira = p["subtype"] == 0
    p["period"] = np.where(mira, np.clip(p["period"], 100.0, 500.0), p["period"])
    _pulsator_phases(p, rng)


def _derive_eb(p, rng):
    eccentric = (p["subtype"] == 0) & (rng.random(p["period"].size) < 0.3)
    p["ecc_shift"] = np.where(eccentric, p["ecc_shift"], 0.0)
    phase = np.linspace(0.0, 1.0, 64, endpoint=False)  # error < 0.001 mag
    # The mean magnitude over a cycle, so that ref_mag is the mean as for other variables.
    column = {k: v[:, None] for k, v in p.items()}
    p["mag_offset"] = _eb_dmag(column, phase[None, :], 1.0).mean(axis=1)


def _derive_agn(p, rng):
    p["tau"] = p["tau_rest"] * (1.0 + p["z"])


_DERIVE = {"uLens": _derive_ulens, "CV": _derive_cv, "RRL": _derive_rrl,
           "DSCT": _pulsator_phases,
           "LPV": _derive_lpv, "EB": _derive_eb, "AGN": _derive_agn}


def peak_time_days(cls: str, params: dict[str, np.ndarray]) -> np.ndarray:
    """r-band peak time (days after dt = 0) of each transient in ``params``."""
    if cls not in TRANSIENTS:
        raise ValueError(f"{cls!r} is not a transient class")
    if _SHAPE.get(cls) in ("sn", "snii"):
        return params["t_rise"]
    if cls == "TDE":
        return _TDE_ONSET_SIGMA * params["sigma_rise"]
    return np.zeros(len(params["ref_mag"]))  # uLens, CV, Flare: dt = 0 is the peak


def period_days(cls: str, params: dict[str, np.ndarray]) -> np.ndarray:
    """Period (days) of each source of a periodic class (RRL, EB, DSCT, LPV)."""
    if cls not in PERIODIC:
        raise ValueError(f"{cls!r} is not a periodic class")
    return params["period"]


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
    phi = dt - _TDE_ONSET_SIGMA * p["sigma_rise"]
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


def _eb_dmag(p, phase, depth_scale):
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
    dm = _eb_dmag(p, phase, scale)
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


def magnitudes(cls: str, params: dict[str, np.ndarray], idx: np.ndarray,
               dt_days: np.ndarray, band: np.ndarray) -> np.ndarray:
    """AB magnitude of source ``idx[k]`` at ``dt_days[k]`` (days since its dt = 0) in band
    ``band[k]`` (0, 1, 2 = g, r, i); ``+inf`` where it gives no flux. 1-D, equal length."""
    _check_class(cls)
    idx = np.asarray(idx, dtype=np.int64)
    dt = np.asarray(dt_days, dtype=float)
    band = np.asarray(band, dtype=np.int64)
    if not idx.shape == dt.shape == band.shape:
        raise ValueError("idx, dt_days and band must have the same shape")
    if idx.size == 0:
        return np.empty(0)
    return np.asarray(_MODELS[cls](_gather(params, idx), dt, band), dtype=float)


def baseline_magnitudes(cls: str, params: dict[str, np.ndarray], idx: np.ndarray,
                        band: np.ndarray) -> np.ndarray:
    """Magnitude of the source's steady counterpart (what a reference image holds):
    ``+inf`` for explosive transients, the unlensed star for uLens, the quiescent star
    for CV and Flare, the mean magnitude for variables."""
    _check_class(cls)
    p = _gather(params, np.asarray(idx, dtype=np.int64))
    band = np.asarray(band, dtype=np.int64)
    if cls in _SHAPE:
        return np.full(band.shape, NO_FLUX)
    if cls == "uLens":
        return _ulens_baseline(p, band)
    if cls == "CV":
        return p["ref_mag"] + p["amp"] + _pick(band, p["gr_q"], p["ir_q"])
    if cls == "Flare":
        return p["ref_mag"] + 2.5 * np.log10(1.0 + p["a0"]) + _pick(band, p["gr_q"], p["ir_q"])
    return p["ref_mag"] + _pick(band, p["gr"], p["ir"])
