"""Training light curves: every class observed through randomised surveys.

The classifier must not learn one simulator's cadence, so each light curve gets its own
survey: SiTian-like (g, r, i together, 18-60 min revisits, 2-10 h nights, nights lost
to weather) or sparse (ZTF-like: one band per visit, 1-3 visits a night, gaps of days),
its own depth per visit (5-sigma limits 19.3-21.8), its own error floor (0.005-0.04
mag), its own window on the event (from long before a transient starts to long after
its peak; any phase of a variable) and its own brightness (half uniform in 15.5-20.8
mag at peak or mean, half near the detection limit, 19.5-21.2). One in eight light
curves keeps a single band. A copy truncated to its first night of detections teaches
early classification.

The light curves come from a ``Generator``: our own models (``SIMULATOR``, ``make_set``)
or redback's physical models (``REDBACK``, ``make_redback_set``: the six explosive
transient classes only), for leave-one-generator-out checks (docs/classifier.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from observatory.taxonomy import CLASSES, TRANSIENTS
from simulator import lightcurve_priors as lp
from simulator import lightcurves as lc
from simulator import redback_curves as rc

N_SLOTS = 32  # candidate visits per night
MAX_NIGHTS = 60


@dataclass
class LightCurveSet:
    """Flat detection table (sorted by light curve, then time) and labels."""

    obj: np.ndarray
    mjd: np.ndarray
    band: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    label: np.ndarray  # class index per light curve
    first_night: np.ndarray  # bool per light curve: truncated to its first night
    # Per light curve, where the generator knows them: the steady counterpart's g, r, i
    # magnitudes (+inf: none) and the r-band peak (transients) or mean (variables), from
    # which ``classifier_training.references`` draws what a survey's reference holds.
    base: np.ndarray | None = None
    peak: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.label)


@dataclass(frozen=True)
class Generator:
    """Where light curves come from: ``sample(cls, n, rng, peak_mag) -> params``,
    ``peak_time(cls, params)`` (days from dt = 0 to a transient's peak),
    ``magnitudes(cls, params, idx, dt, band)`` (true AB magnitudes) and
    ``baseline(cls, params, idx, band)`` (the steady counterpart, +inf if none)."""

    sample: Callable
    peak_time: Callable
    magnitudes: Callable
    baseline: Callable


# Our own models (simulator/lightcurves.py) and redback's (simulator/redback_curves.py).
SIMULATOR = Generator(lp.sample_params, lp.peak_time_days, lc.magnitudes,
                      lc.baseline_magnitudes)
REDBACK = Generator(rc.sample_params, rc.peak_time_days, rc.magnitudes,
                    rc.baseline_magnitudes)


def _window_offset(cls: str, params: dict, n: int, rng, gen: Generator = SIMULATOR) -> np.ndarray:
    """Days from the source's reference time to the survey's first visit."""
    if cls in TRANSIENTS:
        peak = gen.peak_time(cls, params)
        scale = np.maximum(np.abs(peak), 1.0)
        return peak + rng.uniform(-1.5, 1.0, n) * scale - rng.uniform(0, 10, n)
    return rng.uniform(0, 2000, n)


def observe_class(cls: str, n: int, rng: np.random.Generator, mag_limit: float = 21.8,
                  gen: Generator = SIMULATOR, with_reference: bool = False):
    """Detections of n sources of one class (from generator ``gen``) through n random
    surveys; with ``with_reference`` also each source's steady counterpart and peak
    (``_counterparts``)."""
    # Brightness uniform over the detectable range: no magnitude prior to learn, and
    # every light curve has a chance to be seen.
    # Half the sources near the detection limit, where a flux-limited survey finds most.
    bright = np.where(rng.random(n) < 0.5, rng.uniform(15.5, 20.8, n), rng.uniform(19.5, 21.2, n))
    params = gen.sample(cls, n, rng, bright)
    sitian = rng.random(n) < 0.6
    cadence = np.where(sitian, rng.uniform(0.0125, 0.042, n), rng.uniform(0.03, 0.2, n))
    night_keep = rng.uniform(0.4, 1.0, n)
    n_nights = np.where(rng.random(n) < 0.3, rng.integers(1, 4, n),
                        rng.integers(4, MAX_NIGHTS + 1, n))
    slots_per_night = np.where(sitian, rng.integers(6, N_SLOTS + 1, n), rng.integers(1, 4, n))
    gap = np.where(sitian, 1.0, rng.choice([1.0, 2.0, 3.0], n))
    offset = _window_offset(cls, params, n, rng, gen)
    depth = rng.uniform(19.8, 21.5, n)
    floor = rng.uniform(0.005, 0.04, n)

    night = np.arange(MAX_NIGHTS)
    slot = np.arange(N_SLOTS)
    keep = ((night[None, :, None] < n_nights[:, None, None])
            & (rng.random((n, MAX_NIGHTS, 1)) < night_keep[:, None, None])
            & (slot[None, None, :] < slots_per_night[:, None, None]))
    src, nt, sl = np.nonzero(keep)
    t = (nt * gap[src] + 0.05 + sl * cadence[src]
         + rng.normal(0, 0.002, src.size))
    # SiTian visits give g, r and i at once; sparse visits one band (mostly g or r).
    multi = sitian[src]
    reps = np.where(multi, 3, 1)
    src = np.repeat(src, reps)
    t = np.repeat(t, reps)
    band = np.where(np.repeat(multi, reps), np.tile([0, 1, 2], len(reps))[:src.size], 0)
    if (~multi).any():
        single = ~np.repeat(multi, reps)
        band[single] = rng.choice(3, single.sum(), p=[0.45, 0.45, 0.1])
    # Some surveys observe in one band only (OGLE's I, a follow-up series in r).
    one_band = np.where(rng.random(n) < 0.12, rng.integers(0, 3, n), -1)
    keep_band = (one_band[src] < 0) | (band == one_band[src])
    src, t, band = src[keep_band], t[keep_band], band[keep_band]
    m5 = depth[src] + rng.normal(0, 0.3, src.size) - np.array([0.0, 0.2, 0.6])[band]
    out = _detect(cls, params, src, t, band, offset, m5, floor, rng, mag_limit, gen)
    return out + _counterparts(cls, params, n, bright, gen) if with_reference else out


def _counterparts(cls, params, n, peak, gen) -> tuple:
    """(steady counterpart g, r, i (n, 3), +inf where none; r peak or mean (n,)): no
    random draws, so the light curves are those drawn without them."""
    idx = np.arange(n)
    base = np.stack([np.broadcast_to(gen.baseline(cls, params, idx, np.full(n, b)), (n,))
                     for b in range(3)], axis=1).astype(float)
    return base, np.asarray(peak, dtype=float)


def _detect(cls, params, src, t, band, offset, m5, floor, rng, mag_limit, gen):
    """Detections (5-sigma, with a 20 % scatter in the threshold) and their errors."""
    true = gen.magnitudes(cls, params, src, t + offset[src], band)
    with np.errstate(over="ignore", invalid="ignore"):
        snr = 5.0 * 10 ** (0.4 * (m5 - true))
    sigma = np.hypot(1.0857 / np.maximum(snr, 1e-3), floor[src])
    obs = true + rng.normal(0, 1, src.size) * sigma
    ok = np.isfinite(true) & (snr * (1 + rng.normal(0, 0.2, src.size)) >= 5) & (obs < mag_limit)
    if cls in TRANSIENTS:
        # In outburst: 0.2 mag or more above the steady counterpart (if it has one).
        base = gen.baseline(cls, params, src[ok], band[ok])
        active = true[ok] < base - 0.2
    else:
        active = np.ones(int(ok.sum()), dtype=bool)
    return src[ok], t[ok], band[ok], obs[ok], sigma[ok], active


SITIAN_NIGHTS = 45


def observe_sitian(cls: str, n: int, rng: np.random.Generator, mag_limit: float = 21.8,
                   gen: Generator = SIMULATOR, with_reference: bool = False):
    """Detections of n sources of one class (from ``gen``) by a continuous SiTian stare
    survey.

    The held-out set the targets are measured on: g, r and i together every 25-40
    minutes while the field is up (3-9 h a night), 30 % of nights lost to weather,
    per-visit r depth around the simulator's 20.2 (g 0.1 deeper, i 0.3 shallower), and
    brightness from the population's own flux-limited magnitude distribution. The survey
    runs for 45 nights and, for a transient, starts well before its rise, so the first
    night with detections is the night it crosses the limit.
    """
    bright = lp.mag_distribution(cls, n, rng, faint_limit=21.0)
    params = gen.sample(cls, n, rng, bright)
    if cls in TRANSIENTS:
        peak = gen.peak_time(cls, params)
        offset = peak - np.maximum(1.5 * np.abs(peak), 10.0) - rng.uniform(0, 20, n)
    else:
        offset = rng.uniform(0, 2000, n)
    cadence = rng.uniform(25, 40, n) / 1440
    hours = rng.uniform(3, 9, n)
    depth = rng.normal(20.2, 0.25, n)
    floor = rng.uniform(0.008, 0.02, n)
    slots = np.arange(N_SLOTS)
    clear = rng.random((n, SITIAN_NIGHTS)) >= 0.3
    start = rng.uniform(0.0, 0.3, (n, SITIAN_NIGHTS))
    keep = clear[:, :, None] & (slots[None, None, :] * cadence[:, None, None]
                                <= hours[:, None, None] / 24)
    src, nt, sl = np.nonzero(keep)
    t = nt + start[src, nt] + sl * cadence[src] + rng.normal(0, 0.001, src.size)
    src = np.repeat(src, 3)
    t = np.repeat(t, 3)
    band = np.tile(np.array([0, 1, 2]), src.size // 3)
    visit_depth = depth[src] + np.repeat(rng.normal(0, 0.2, src.size // 3), 3)
    m5 = visit_depth + np.array([0.1, 0.0, -0.3])[band]
    out = _detect(cls, params, src, t, band, offset, m5, floor, rng, mag_limit, gen)
    return out + _counterparts(cls, params, n, bright, gen) if with_reference else out


def make_set(n_per_class: int, seed: int, first_night_fraction: float = 0.35,
             survey: str = "random", early_fraction: float = 0.0) -> LightCurveSet:
    """A labelled set; roughly ``first_night_fraction`` of light curves are truncated to
    the night of their first detection, and ``early_fraction`` of the others to their
    first 2-4 nights (as a survey's new candidates are seen). Light curves with under 3
    detections dropped.

    ``survey``: "random" (randomised surveys of ``observe_class``, for training and the
    stress test) or "sitian" (the continuous survey of ``observe_sitian``; sources are
    drawn until every class has ``n_per_class`` light curves, so the set is balanced).
    """
    observe = {"random": observe_class, "sitian": observe_sitian}[survey]
    return _make(observe, CLASSES, n_per_class, np.random.default_rng(seed),
                 first_night_fraction, fill=survey == "sitian", early_fraction=early_fraction)


def make_redback_set(n_per_class: int, seed: int, first_night_fraction: float = 0.35,
                     survey: str = "random", early_fraction: float = 0.0) -> LightCurveSet:
    """A labelled set from redback's physical models (simulator/redback_curves.py) for
    the classes they cover (``redback_classes()``; labels index ``CLASSES``), observed
    like ``make_set``. Every covered class has exactly ``n_per_class`` light curves with
    3+ detections, whatever the survey. Needs the ``generators`` extra (redback)."""
    observe = {"random": observe_class, "sitian": observe_sitian}[survey]
    return _make(partial(observe, gen=REDBACK), rc.redback_classes(), n_per_class,
                 np.random.default_rng(seed), first_night_fraction, fill=True, adaptive=True,
                 early_fraction=early_fraction)


def _make(observe, classes, n_per_class, rng, first_night_fraction, fill, adaptive=False,
          early_fraction=0.0):
    """Light curves of ``classes`` from ``observe``; with ``fill`` sources are drawn until
    each class has ``n_per_class``, else one draw of ``n_per_class`` sources. With
    ``adaptive`` a later draw is sized by the yield so far (each source costs a model
    evaluation)."""
    parts, offset = [], 0
    for cls in classes:
        k = CLASSES.index(cls)
        got, need, drawn, kept = [], n_per_class, 0, 0
        for _ in range(40 if fill else 1):
            size = n_per_class
            if adaptive and drawn:  # 1.5 times what the yield so far says is needed
                rate = max(kept / drawn, 0.02)
                size = min(4 * n_per_class, max(16, math.ceil(1.5 * need / rate)))
            piece = _one_chunk(observe, cls, size, rng, first_night_fraction, early_fraction)
            drawn, kept = drawn + size, kept + piece[5].size
            got.append(_take(piece, need))
            need -= got[-1][5].size
            if need <= 0:
                break
        if fill and need > 0:
            raise ValueError(f"{cls}: only {n_per_class - need} of {n_per_class} light "
                             f"curves with 3+ detections after {len(got)} draws")
        ids = 0
        for src, t, band, mag, err, first, base, peak in got:
            parts.append((src + offset + ids, t, band, mag, err, np.full(first.size, k), first,
                          base, peak))
            ids += first.size
        offset += ids
    cat = [np.concatenate([p[i] for p in parts]) for i in range(9)]
    order = np.lexsort((cat[1], cat[0]))
    return LightCurveSet(cat[0][order], cat[1][order], cat[2][order], cat[3][order],
                         cat[4][order], cat[5], cat[6], cat[7], cat[8])


def _one_chunk(observe, cls, n, rng, first_night_fraction, early_fraction=0.0):
    """Light curves (with at least 3 detections) of n sources, renumbered 0..m-1."""
    src, t, band, mag, err, active, base, peak = observe(cls, n, rng, with_reference=True)
    first = rng.random(n) < first_night_fraction
    # The first night of a transient is the night its outburst is first detected (a
    # quiescent counterpart seen on earlier nights is not the transient yet); that
    # night's detections of the counterpart before the outburst stay in.
    t0 = np.full(n, np.inf)
    np.minimum.at(t0, src[active], t[active])
    keep = ~first[src] | ((t - t0[src] < 0.6) & (t - t0[src] > -0.5))
    if early_fraction > 0:  # (no draw otherwise: the shipped sets stay as they were)
        r2 = np.random.default_rng([int(rng.integers(1 << 31)), 77])
        early = ~first & (r2.random(n) < early_fraction)
        nights = r2.integers(2, 5, n)  # nights kept from the outburst's first night
        keep &= ~early[src] | (t - t0[src] < nights[src] - 0.4)
    src, t, band, mag, err = src[keep], t[keep], band[keep], mag[keep], err[keep]
    good = np.bincount(src, minlength=n) >= 3
    sel = good[src]
    ids, src2 = np.unique(src[sel], return_inverse=True)
    return (src2, t[sel] + 60000.0, band[sel], mag[sel], err[sel], first[ids], base[ids],
            peak[ids])


def _take(piece, m):
    """The first m light curves of a chunk."""
    src, t, band, mag, err, first, base, peak = piece
    sel = src < m
    return src[sel], t[sel], band[sel], mag[sel], err[sel], first[:m], base[:m], peak[:m]
