"""Parameter priors of the light-curve models: per class, subtypes with parameter ranges
(sources cited beside them), the apparent-magnitude distribution, and what the
parameters imply (peak time, period). The models themselves are in
simulator/lightcurves.py."""

from __future__ import annotations

import math

import numpy as np

from observatory.taxonomy import PERIODIC, TRANSIENTS
from simulator.lightcurves import SHAPE, TDE_ONSET_SIGMA, check_class, eb_dmag

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


def _draw(rng: np.random.Generator, n: int, spec: tuple[str, float, float]) -> np.ndarray:
    kind, a, b = spec
    if kind == _U:
        return rng.uniform(a, b, n)
    if kind == _LOG:
        return np.exp(rng.uniform(math.log(a), math.log(b), n))
    return 10 ** (math.log10(a) + b * rng.standard_normal(n))


def mag_distribution(cls: str, n: int, rng: np.random.Generator,
                     faint_limit: float = 23.0) -> np.ndarray:
    """``n`` apparent ref-mag draws (r, AB) with N(<m) ~ 10^(MAG_SLOPE m) between
    ``BRIGHT_MAG[cls]`` and ``faint_limit`` (by inverse transform)."""
    check_class(cls)
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
    check_class(cls)
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
    p["mag_offset"] = eb_dmag(column, phase[None, :], 1.0).mean(axis=1)


def _derive_agn(p, rng):
    p["tau"] = p["tau_rest"] * (1.0 + p["z"])


_DERIVE = {"uLens": _derive_ulens, "CV": _derive_cv, "RRL": _derive_rrl,
           "DSCT": _pulsator_phases,
           "LPV": _derive_lpv, "EB": _derive_eb, "AGN": _derive_agn}


def peak_time_days(cls: str, params: dict[str, np.ndarray]) -> np.ndarray:
    """r-band peak time (days after dt = 0) of each transient in ``params``."""
    if cls not in TRANSIENTS:
        raise ValueError(f"{cls!r} is not a transient class")
    if SHAPE.get(cls) in ("sn", "snii"):
        return params["t_rise"]
    if cls == "TDE":
        return TDE_ONSET_SIGMA * params["sigma_rise"]
    return np.zeros(len(params["ref_mag"]))  # uLens, CV, Flare: dt = 0 is the peak


def period_days(cls: str, params: dict[str, np.ndarray]) -> np.ndarray:
    """Period (days) of each source of a periodic class (RRL, EB, DSCT, LPV)."""
    if cls not in PERIODIC:
        raise ValueError(f"{cls!r} is not a periodic class")
    return params["period"]
