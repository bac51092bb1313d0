"""Light-curve features from the field's library, ``light-curve`` (Rust, used by the
alert brokers: Fink, ANTARES, AMPEL), beside the hand-written ones of
``policies.features``.

What the library adds that group reductions cannot give:

* **Parametric fits per band** in flux, the shape brokers classify supernovae by:
  Bazin et al. (2009, A&A 499, 653) ``A e^{-(t-t0)/t_fall} / (1 + e^{-(t-t0)/t_rise}) + B``.
  Its rise and fall times are physical time scales that another survey or generator
  shares (an SN Ia rises in ~15-20 d and falls in ~30 d whatever the cadence), unlike
  the position of the brightest point in a survey's window. Its reduced chi-square
  tells an explosive event (chi2 ~ 1) from a variable (a Bazin shape fits it badly).
* **A Lomb-Scargle periodogram** over all bands (each band's mean removed), for light
  curves spanning more than a night: the best period and its signal-to-noise, and the
  smoothness (von Neumann eta) of the light curve folded at that period, which
  separates periodic variables (EB, RRL, DSCT) from stochastic ones (AGN) and
  transients once an object has a few nights.
* **Robust variability indices per band:** Stetson K, kurtosis, the 10-90 % range over
  the standard deviation.

Each fit needs a minimum number of points in its band; below it the feature is NaN,
which the trees handle. Fluxes are relative to the object's brightest detection in
that band, so no feature carries absolute brightness.
"""

from __future__ import annotations

import light_curve as licu
import numpy as np

from observatory.bands import BANDS

N_BANDS = len(BANDS)
BAZIN_MIN = 6  # points in a band for a Bazin fit (5 parameters)
PERIOD_MIN = 10  # points over all bands for the periodogram ...
PERIOD_SPAN_D = 1.0  # ... spanning at least this (d): within a night our own features
# (eta, the fastest change) already see fast variability, and one-night light curves
# are most of what the brain classifies
BAZIN_SPAN_D = 1.0  # ... spanning at least this (d): within one night rise and fall
# times are not constrained, and the fits are most of the cost
# The periodogram's grid reaches this many times the light curve's average Nyquist
# frequency (FFT-based; a fixed grid down to the fastest delta Scuti for every curve
# would cost 3x more for one-night light curves).
FREQ_FACTOR = 4.0


def lc_feature_names() -> list[str]:
    names = []
    for b in BANDS:
        names += [f"{b}_bazin_log_rise", f"{b}_bazin_log_fall", f"{b}_bazin_log_chi2",
                  f"{b}_stetson_k", f"{b}_kurtosis", f"{b}_ipr_over_std"]
    names += ["log_period", "period_snr", "folded_eta"]
    return names


def _splits(obj: np.ndarray, n: int) -> np.ndarray:
    return np.searchsorted(obj, np.arange(n + 1))


def _reduce(fn, x: np.ndarray, cut: np.ndarray, fill: float) -> np.ndarray:
    """``fn`` (np.minimum or np.maximum) over each group of sorted ids (``cut`` from
    ``_splits``); ``fill`` for empty groups. reduceat, not ufunc.at: 10x faster."""
    out = np.full(cut.size - 1, fill)
    full = np.flatnonzero(cut[1:] > cut[:-1])
    if full.size:
        out[full] = fn.reduceat(x, cut[:-1][full])
    return out


def _extractors():
    bazin = licu.BazinFit("lmsder")
    period = licu.Periodogram(peaks=1, max_freq_factor=FREQ_FACTOR, fast=True,
                              phase_features=[licu.Eta()])
    return bazin, period


def _many(feature, curves: list, n_out: int) -> np.ndarray:
    if not curves:
        return np.empty((0, n_out))
    return np.asarray(feature.many(curves, sorted=True, check=False, n_jobs=-1,
                                   fill_value=np.nan), dtype=float).reshape(len(curves), n_out)


INDEX_MIN = 4  # points in a band for the variability indices (kurtosis needs 4)


def indices(k: np.ndarray, m: np.ndarray, e: np.ndarray, n: int) -> np.ndarray:
    """(n, 3): Stetson K, excess kurtosis and the 10-90 % inter-percentile range over the
    standard deviation of each group ``k`` (sorted) of magnitudes ``m`` with errors
    ``e``; NaN under ``INDEX_MIN`` points. The same definitions as the light-curve
    library's StetsonK, Kurtosis, InterPercentileRange(0.1) (Hazen quantiles) and
    StandardDeviation, computed for every group at once: per light curve they cost
    more to call than to compute (tests/test_classifier_context.py checks agreement)."""
    out = np.full((n, 3), np.nan)
    cnt = np.bincount(k, minlength=n).astype(float)
    ok = cnt >= INDEX_MIN
    if not ok.any():
        return out
    c = np.maximum(cnt, 1)
    w = 1 / e**2
    mw = np.bincount(k, w * m, n) / np.maximum(np.bincount(k, w, n), 1e-300)
    d = (m - mw[k]) / e
    with np.errstate(invalid="ignore", divide="ignore"):
        stetson = np.bincount(k, np.abs(d), n) / np.sqrt(cnt * np.bincount(k, d * d, n))
        mean = np.bincount(k, m, n) / c
        r = m - mean[k]
        var = np.bincount(k, r * r, n) / (cnt - 1)
        m4 = np.bincount(k, r**4, n)
        kurt = ((cnt + 1) * cnt / ((cnt - 1) * (cnt - 2) * (cnt - 3)) * m4 / var**2
                - 3 * (cnt - 1) ** 2 / ((cnt - 2) * (cnt - 3)))
    # Hazen quantiles: position q * n - 0.5 (0-based) in each sorted group, clipped.
    # One sort of group id plus the magnitude's rank within [0, 1): cheaper than lexsort.
    lo, span = m.min(), np.ptp(m) + 1.0
    ms = np.sort(k + (m - lo) / span)
    ms = (ms - np.floor(ms)) * span + lo
    start = np.concatenate([[0], np.cumsum(cnt[:-1])]).astype(np.int64)
    q = []
    for level in (0.1, 0.9):
        pos = np.clip(level * cnt - 0.5, 0, cnt - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(cnt.astype(np.int64) - 1, 0))
        frac = pos - lo
        a = np.where(ok, start + lo, 0)
        b = np.where(ok, start + hi, 0)
        q.append(ms[a] * (1 - frac) + ms[b] * frac if ms.size else np.zeros(n))
    with np.errstate(invalid="ignore", divide="ignore"):
        ipr = (q[1] - q[0]) / np.sqrt(var)
    out[ok] = np.column_stack([stetson, kurt, ipr])[ok]
    return out


def extract_lc(obj: np.ndarray, mjd: np.ndarray, band: np.ndarray, mag: np.ndarray,
               err: np.ndarray, n_objects: int | None = None) -> np.ndarray:
    """Features (n_objects, len(lc_feature_names())) from a detection table sorted by
    (obj, mjd), as ``policies.features.extract`` takes it."""
    obj = np.asarray(obj, dtype=np.int64)
    n = int(n_objects if n_objects is not None else (obj.max() + 1 if obj.size else 0))
    mjd = np.asarray(mjd, dtype=np.float64)
    band = np.asarray(band, dtype=np.int64)
    mag = np.asarray(mag, dtype=np.float64)
    err = np.maximum(np.asarray(err, dtype=np.float64), 0.005)
    bazin, period = _extractors()
    out = np.full((n, len(lc_feature_names())), np.nan)
    col = 0
    for b in range(N_BANDS):
        sel = np.flatnonzero(band == b)
        k = obj[sel]
        cnt = np.bincount(k, minlength=n)
        t, m, e = mjd[sel], mag[sel], err[sel]
        # Flux relative to the brightest detection in this band (no absolute scale).
        cut = _splits(k, n)
        best = _reduce(np.minimum, m, cut, np.inf)
        f = 10 ** (-0.4 * (m - best[k]))
        fe = f * e / 1.0857
        t_lo, t_hi = _reduce(np.minimum, t, cut, np.inf), _reduce(np.maximum, t, cut, -np.inf)
        ok = np.flatnonzero((cnt >= BAZIN_MIN) & (t_hi - t_lo >= BAZIN_SPAN_D))
        curves = [(t[cut[i]:cut[i + 1]], f[cut[i]:cut[i + 1]], fe[cut[i]:cut[i + 1]])
                  for i in ok]
        fit = _many(bazin, curves, 6)  # amplitude, baseline, t0, rise, fall, chi2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[ok, col] = np.log10(np.clip(fit[:, 3], 1e-3, 1e4))
            out[ok, col + 1] = np.log10(np.clip(fit[:, 4], 1e-3, 1e4))
            out[ok, col + 2] = np.log10(fit[:, 5] + 1e-3)
        out[:, col + 3:col + 6] = indices(k, m, e, n)
        col += 6
    # Periodogram over all bands, each band's mean removed.
    key = obj * N_BANDS + band
    s = np.bincount(key, weights=mag, minlength=n * N_BANDS)
    c = np.bincount(key, minlength=n * N_BANDS)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = mag - (s / np.maximum(c, 1))[key]
    cnt = np.bincount(obj, minlength=n)
    cut = _splits(obj, n)
    t_lo, t_hi = _reduce(np.minimum, mjd, cut, np.inf), _reduce(np.maximum, mjd, cut, -np.inf)
    ok = np.flatnonzero((cnt >= PERIOD_MIN) & (t_hi - t_lo >= PERIOD_SPAN_D))
    curves = [(mjd[cut[i]:cut[i + 1]], rel[cut[i]:cut[i + 1]], err[cut[i]:cut[i + 1]])
              for i in ok]
    per = _many(period, curves, 3)  # period, its S/N, folded eta
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok, col] = np.log10(per[:, 0])
        out[ok, col + 1] = per[:, 1]
        out[ok, col + 2] = np.log10(per[:, 2] + 1e-3)
    out[~np.isfinite(out)] = np.nan
    return out
