"""Light-curve features, vectorised over many objects at once.

Input is a flat detection table sorted by object then time (as ``Associator`` returns
it, or as ``brain classify`` reads it): object index, MJD, band (0, 1, 2 = g, r, i), AB
magnitude and error. Every feature is a group reduction (``np.bincount`` and friends), so
cost grows with the number of detections, never with a Python loop over objects.

Features describe shape, colour and time scale, not brightness: absolute magnitudes
depend on the survey's depth and on the population's distances, which another survey or
generator does not share. Missing bands give NaN, which the model handles.
"""

from __future__ import annotations

import numpy as np

from observatory.bands import BANDS

N_BANDS = len(BANDS)
SAME_VISIT_D = 0.02  # detections closer in time than this (d) are one visit
NIGHT_D = 0.5  # gaps longer than this (d) separate nights


def _group_stats(k: np.ndarray, x: np.ndarray, w: np.ndarray, n: int):
    """Weighted count, mean and standard deviation of x by group k (NaN where empty)."""
    cnt = np.bincount(k, weights=w, minlength=n)
    s1 = np.bincount(k, weights=w * x, minlength=n)
    s2 = np.bincount(k, weights=w * x * x, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = np.maximum(s2 / cnt - mean * mean, 0.0)
    return cnt, mean, np.sqrt(var)


def _group_extreme(k, x, n, fn, fill):
    out = np.full(n, fill, dtype=float)
    fn.at(out, k, x)
    return out


def _slope(k, t, y, n):
    """Least-squares slope of y(t) per group (NaN with fewer than two distinct times)."""
    _, tm, _ = _group_stats(k, t, np.ones_like(t), n)
    _, ym, _ = _group_stats(k, y, np.ones_like(y), n)
    dt = t - tm[k]
    sxy = np.bincount(k, weights=dt * (y - ym[k]), minlength=n)
    sxx = np.bincount(k, weights=dt * dt, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 1e-8, sxy / sxx, np.nan)


def feature_names() -> list[str]:
    names = []
    for b in BANDS:
        names += [f"{b}_n", f"{b}_std", f"{b}_amp", f"{b}_log_chi2", f"{b}_slope",
                  f"{b}_eta", f"{b}_skew", f"{b}_fast"]
    names += ["n_nights", "log_span_d", "peak_phase", "log_rise_rate", "log_decline_rate",
              "rise_d", "decline_d", "g_r_mean", "r_i_mean", "g_r_peak", "g_r_slope",
              "r_i_slope", "amp_ratio_g_i", "bright_frac"]
    return names


def extract(obj: np.ndarray, mjd: np.ndarray, band: np.ndarray, mag: np.ndarray,
            err: np.ndarray, n_objects: int | None = None) -> np.ndarray:
    """Features (n_objects, n_features) from a detection table sorted by (obj, mjd).

    ``obj`` are indices 0..n_objects-1 (use ``np.unique(..., return_inverse=True)``)."""
    obj = np.asarray(obj, dtype=np.int64)
    n = int(n_objects if n_objects is not None else (obj.max() + 1 if obj.size else 0))
    mjd = np.asarray(mjd, dtype=float)
    band = np.asarray(band, dtype=np.int64)
    mag = np.asarray(mag, dtype=float)
    err = np.maximum(np.asarray(err, dtype=float), 0.005)
    cols = []
    ones = np.ones_like(mag)
    for b in range(N_BANDS):
        sel = band == b
        k, t, m, e = obj[sel], mjd[sel], mag[sel], err[sel]
        cnt, mean, std = _group_stats(k, m, np.ones_like(m), n)
        mn = _group_extreme(k, m, n, np.minimum, np.inf)
        mx = _group_extreme(k, m, n, np.maximum, -np.inf)
        chi2 = np.bincount(k, weights=((m - mean[k]) / e) ** 2, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_chi2 = np.log10(chi2 / np.maximum(cnt - 1, 1) + 1e-3)
            z = (m - mean[k]) / np.where(std[k] > 0, std[k], 1.0)
            skew = np.bincount(k, weights=z**3, minlength=n) / cnt
        # Consecutive detections of the same object in this band (rows are time-sorted).
        same = k[1:] == k[:-1]
        dm = np.diff(m)[same]
        dtt = np.diff(t)[same]
        kk = k[1:][same]
        d2 = np.bincount(kk, weights=dm * dm, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            eta = np.log10(d2 / np.maximum(cnt - 1, 1) / np.where(std > 0, std * std, np.nan)
                           + 1e-3)
        # Fastest significant change between consecutive points in one night (mag/d).
        ee = np.hypot(e[1:], e[:-1])[same]
        rate = np.where((dtt < NIGHT_D) & (dtt > 1e-3) & (np.abs(dm) > 3 * ee),
                        np.abs(dm) / np.maximum(dtt, 1e-3), 0.0)
        fast = np.log10(_group_extreme(kk, rate, n, np.maximum, 0.0) + 1e-2)
        amp = np.where(cnt > 0, mx - mn, np.nan)
        slope = _slope(k, t, m, n)
        empty = cnt == 0
        for arr in (std, log_chi2, slope, eta, skew):
            arr[empty] = np.nan
        fast[empty] = np.nan
        cols += [cnt, std, amp, log_chi2, slope, eta, skew, fast]

    # Whole light curve.
    t_first = _group_extreme(obj, mjd, n, np.minimum, np.inf)
    t_last = _group_extreme(obj, mjd, n, np.maximum, -np.inf)
    span = t_last - t_first
    new_night = np.ones(len(obj), dtype=bool)
    new_night[1:] = (obj[1:] != obj[:-1]) | (np.diff(mjd) > NIGHT_D)
    n_nights = np.bincount(obj, weights=new_night.astype(float), minlength=n)
    # Peak: the brightest point relative to its band's mean (bands differ in colour).
    _, bmean, _ = _group_stats(obj * N_BANDS + band, mag, ones, n * N_BANDS)
    rel = mag - bmean[obj * N_BANDS + band]
    best = _group_extreme(obj, rel, n, np.minimum, np.inf)
    is_peak = rel <= best[obj] + 1e-9
    t_peak = _group_extreme(obj[is_peak], mjd[is_peak], n, np.minimum, np.inf)
    rise_d = t_peak - t_first
    decline_d = t_last - t_peak
    first_rel = _value_at(obj, rel, mjd, t_first, n)
    last_rel = _value_at(obj, rel, mjd, t_last, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        peak_phase = np.where(span > 0, rise_d / span, 0.5)
        rise_rate = np.log10(np.abs(first_rel - best) / (rise_d + 0.05) + 1e-3)
        decline_rate = np.log10(np.abs(last_rel - best) / (decline_d + 0.05) + 1e-3)
    # Colours from the same visit (g, r, i taken together, or nearly so).
    g_r, g_r_t = _visit_colour(obj, mjd, band, mag, 0, 1)
    r_i, r_i_t = _visit_colour(obj, mjd, band, mag, 1, 2)
    cnt_gr, gr_mean, _ = _group_stats(g_r[0], g_r[1], np.ones_like(g_r[1]), n)
    cnt_ri, ri_mean, _ = _group_stats(r_i[0], r_i[1], np.ones_like(r_i[1]), n)
    gr_mean[cnt_gr == 0] = np.nan
    ri_mean[cnt_ri == 0] = np.nan
    gr_slope = _slope(g_r[0], g_r_t, g_r[1], n)
    ri_slope = _slope(r_i[0], r_i_t, r_i[1], n)
    gr_peak = _value_at(g_r[0], g_r[1], g_r_t, t_peak, n, nearest=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        amp_ratio = np.log10(cols[2] / cols[2 * 8 + 2])  # g amplitude over i amplitude
        bright_frac = np.bincount(obj, weights=(rel < best[obj] / 2).astype(float),
                                  minlength=n) / np.bincount(obj, minlength=n)
    cols += [n_nights, np.log10(span + 0.01), peak_phase, rise_rate, decline_rate,
             np.log10(rise_d + 0.01), np.log10(decline_d + 0.01), gr_mean, ri_mean, gr_peak,
             gr_slope, ri_slope, amp_ratio, bright_frac]
    out = np.stack(cols, axis=1)
    out[~np.isfinite(out)] = np.nan
    return out


def _value_at(k, y, t, t_target, n, nearest: bool = False):
    """y at the row whose time equals t_target[k] (or is nearest to it), per group."""
    out = np.full(n, np.nan)
    if len(k) == 0:
        return out
    d = np.abs(t - t_target[k])
    best = _group_extreme(k, d, n, np.minimum, np.inf)
    hit = d <= best[k] + 1e-9 if nearest else d <= 1e-9
    out[k[hit]] = y[hit]
    return out


def _visit_colour(obj, mjd, band, mag, b1, b2):
    """Colour b1-b2 of detections taken in the same visit: ((object, colour), time)."""
    i1 = np.flatnonzero(band == b1)
    i2 = np.flatnonzero(band == b2)
    if i1.size == 0 or i2.size == 0:
        return (np.empty(0, np.int64), np.empty(0)), np.empty(0)
    key2 = obj[i2] * 1e6 + mjd[i2]  # objects sorted, then time: keys ascend
    order = np.argsort(key2, kind="stable")
    key2 = key2[order]
    pos = np.clip(np.searchsorted(key2, obj[i1] * 1e6 + mjd[i1]), 1, len(key2) - 1)
    cand = np.stack([pos - 1, pos])
    j = i2[order][cand]
    gap = np.abs(mjd[j] - mjd[i1]) + 1e9 * (obj[j] != obj[i1])
    pick = np.argmin(gap, axis=0)
    jj = j[pick, np.arange(len(i1))]
    ok = gap[pick, np.arange(len(i1))] < SAME_VISIT_D
    return (obj[i1][ok], mag[i1][ok] - mag[jj][ok]), mjd[i1][ok]
