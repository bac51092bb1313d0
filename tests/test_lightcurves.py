"""Light-curve models and the sky population: shapes, physics, determinism, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.timeseries import LombScargle

from observatory.sky import galactic_lb
from observatory.taxonomy import CLASSES, PERIODIC, TRANSIENTS, VARIABLES
from simulator import lightcurve_priors as lp
from simulator import lightcurves as lc
from simulator import population as pp

T0 = 1.8e9  # 2027-01-15 (unix s)
NIGHT = 0.5 * pp.DAY_S


def _grid_mags(cls, params, grid, band):
    """Magnitudes on a per-source time grid (n, m)."""
    n, m = grid.shape
    idx = np.repeat(np.arange(n), m)
    return lc.magnitudes(cls, params, idx, grid.ravel(), np.full(n * m, band)).reshape(n, m)


def _sample(cls, n, seed=0, mag=18.0):
    return lp.sample_params(cls, n, np.random.default_rng(seed), peak_mag=np.full(n, mag))


def test_taxonomy():
    assert CLASSES == ("SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "CV", "Flare",
                          "uLens", "RRL", "EB", "DSCT", "LPV", "AGN")
    assert TRANSIENTS + VARIABLES == CLASSES
    assert set(pp.RATES) == set(CLASSES)


@pytest.mark.parametrize("cls", CLASSES)
def test_params_have_one_row_per_source(cls):
    p = lp.sample_params(cls, 50, np.random.default_rng(1))
    assert all(len(v) == 50 for v in p.values())
    assert np.all((p["ref_mag"] >= lp.BRIGHT_MAG[cls]) & (p["ref_mag"] <= 23.0))
    given = lp.sample_params(cls, 50, np.random.default_rng(1), peak_mag=np.full(50, 19.5))
    assert np.all(given["ref_mag"] == 19.5)


def _peak_grid(cls, p):
    tp = lp.peak_time_days(cls, p)
    n = tp.size
    if cls == "CV":  # neighbouring outbursts lie >= 0.35 P away
        return tp[:, None] + np.linspace(-0.3, 0.3, 6001)[None, :] * p["p_rec"][:, None]
    if cls == "Flare":  # other flares keep >= 1 d clear of the principal one
        return np.broadcast_to(np.linspace(-0.5, 0.5, 20001), (n, 20001))
    if cls == "uLens":
        return np.linspace(-3, 3, 6001)[None, :] * p["tE"][:, None]
    return np.linspace(0.0, 3.0, 6001)[None, :] * tp[:, None]


@pytest.mark.parametrize("cls", TRANSIENTS)
def test_peak_time_and_peak_magnitude(cls):
    p = _sample(cls, 60, seed=2)
    grid = _peak_grid(cls, p)
    m = _grid_mags(cls, p, grid, 1)
    k = np.argmin(m, axis=1)
    t_num = grid[np.arange(grid.shape[0]), k]
    tol = 1.0 if cls in ("SLSN", "TDE", "SNII") else 0.5
    assert np.abs(t_num - lp.peak_time_days(cls, p)).max() < tol
    assert np.abs(m.min(axis=1) - 18.0).max() < 0.05


@pytest.mark.parametrize("cls", ["SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN"])
def test_explosive_transients_have_no_flux_before_and_long_after(cls):
    p = _sample(cls, 20)
    idx = np.arange(20)
    for dt in (-100.0, -0.01, lc.MAX_AGE_DAYS[cls] + 1.0):
        assert np.all(np.isinf(lc.magnitudes(cls, p, idx, np.full(20, dt), np.ones(20, int))))
    mid = lc.magnitudes(cls, p, idx, lp.peak_time_days(cls, p) + 1.0, np.ones(20, int))
    assert np.all(np.isfinite(mid))


def test_snia_decline_rate_in_g():
    """dm15(g), from the g-band peak, within the documented 0.65-1.45 mag (PRIORS)."""
    p = _sample("SNIa", 400, seed=3)
    grid = np.broadcast_to(np.linspace(0.0, 80.0, 1601), (400, 1601))  # 0.05 d steps
    m = _grid_mags("SNIa", p, grid, 0)
    k = np.argmin(m, axis=1)
    dm15 = m[np.arange(400), k + 300] - m.min(axis=1)
    assert dm15.min() >= 0.65 and dm15.max() <= 1.45
    assert 0.9 < np.median(dm15) < 1.1
    # SN Ia redden after peak: g - r grows by > 0.5 mag in the first month.
    r = _grid_mags("SNIa", p, grid, 1)
    tp = np.rint(lp.peak_time_days("SNIa", p) / 0.05).astype(int)
    rows = np.arange(400)
    reddening = (m[rows, tp + 600] - r[rows, tp + 600]) - (m[rows, tp] - r[rows, tp])
    assert np.all(reddening > 0.5)


def test_tde_declines_as_t_to_minus_five_thirds_at_constant_colour():
    p = _sample("TDE", 100, seed=4)
    tp = lp.peak_time_days("TDE", p)
    idx, r = np.arange(100), np.ones(100, int)
    m1 = lc.magnitudes("TDE", p, idx, tp + 150.0, r)
    m2 = lc.magnitudes("TDE", p, idx, tp + 400.0, r)
    index = (m2 - m1) / 2.5 / np.log10((400.0 + p["t0_pl"]) / (150.0 + p["t0_pl"]))
    assert np.abs(index - 5.0 / 3.0).max() < 0.08
    g1 = lc.magnitudes("TDE", p, idx, tp + 150.0, np.zeros(100, int))
    g2 = lc.magnitudes("TDE", p, idx, tp + 400.0, np.zeros(100, int))
    assert np.allclose(g1 - m1, g2 - m2)
    assert np.all(g1 - m1 <= 0.0)  # blue


def test_kilonova_fades_fast_in_g_and_reddens():
    p = _sample("KN", 300, seed=5)
    idx = np.arange(300)

    def mag(dt, band):
        return lc.magnitudes("KN", p, idx, np.full(300, dt), np.full(300, band))
    assert np.all((mag(3.0, 0) - mag(1.0, 0)) / 2.0 >= 0.8)
    assert np.all((mag(3.0, 2) - mag(1.0, 2)) < (mag(3.0, 0) - mag(1.0, 0)))
    assert np.all(lp.peak_time_days("KN", p) < 1.0)


@pytest.mark.parametrize("cls", PERIODIC)
def test_periods_recovered_by_lomb_scargle(cls):
    rng = np.random.default_rng(6)
    p = _sample(cls, 6, seed=7, mag=17.0)
    period = lp.period_days(cls, p)
    for k in range(6):
        t = np.sort(rng.uniform(0.0, 150.0 * period[k], 1200))
        m = lc.magnitudes(cls, p, np.full(t.size, k), t, np.ones(t.size, int))
        freq, power = LombScargle(t, m).autopower(minimum_frequency=0.2 / period[k],
                                                  maximum_frequency=3.0 / period[k],
                                                  samples_per_peak=20)
        ratio = 1.0 / freq[np.argmax(power)] / period[k]
        ok = abs(ratio - 1) < 0.01 or (cls == "EB" and abs(ratio - 0.5) < 0.005)
        assert ok, (cls, k, period[k], ratio)


@pytest.mark.parametrize("cls", VARIABLES)
def test_variables_average_to_ref_mag(cls):
    p = _sample(cls, 20, seed=8, mag=17.0)
    span = 20.0 * (p["period"] if cls in PERIODIC else p["tau"])
    grid = np.linspace(0.0, 1.0, 4000, endpoint=False)[None, :] * span[:, None]
    mean = _grid_mags(cls, p, grid, 1).mean(axis=1)
    if cls == "AGN":  # a DRW's 20-tau average scatters by ~sigma sqrt(2 tau / T) ~ 0.3 sigma
        sigma = p["sf_inf"] / np.sqrt(2)
        assert np.all(np.abs(mean - 17.0) < 1.5 * sigma) and abs(mean.mean() - 17.0) < 0.03
    else:
        assert np.abs(mean - 17.0).max() < 0.02


def test_microlensing_symmetric_and_achromatic_when_unblended():
    p = _sample("uLens", 50, seed=9)
    idx = np.arange(50)
    dt = np.linspace(0.0, 2.0, 50) * p["tE"]
    for band in range(3):
        b = np.full(50, band)
        before = lc.magnitudes("uLens", p, idx, -dt, b)
        assert np.allclose(before, lc.magnitudes("uLens", p, idx, dt, b), rtol=0, atol=1e-12)
    p["fs_r"][:], p["dfs_g"][:], p["dfs_i"][:] = 1.0, 0.0, 0.0
    gain = [lc.baseline_magnitudes("uLens", p, idx, np.full(50, b))
            - lc.magnitudes("uLens", p, idx, dt, np.full(50, b)) for b in range(3)]
    assert np.allclose(gain[0], gain[1], atol=1e-12) and np.allclose(gain[2], gain[1], atol=1e-12)
    assert gain[1][0] > 0.3  # smallest-lag source is well magnified


def test_agn_structure_function_rises_and_saturates():
    n, tau, sf_inf = 200, 300.0, 0.2
    p = _sample("AGN", n, seed=10, mag=19.0)
    p["tau"][:], p["sf_inf"][:] = tau, sf_inf
    t = np.arange(0.0, 20000.0, 10.0)
    idx = np.repeat(np.arange(n), t.size)
    tt = np.tile(t, n)
    r = np.ones(idx.size, int)
    m = lc.magnitudes("AGN", p, idx, tt, r)
    sf = []
    for lag in (3.0, 30.0, 300.0, 3000.0, 6000.0):
        sf.append(np.sqrt(np.mean((lc.magnitudes("AGN", p, idx, tt + lag, r) - m) ** 2)))
        expected = sf_inf * np.sqrt(1 - np.exp(-lag / tau))  # DRW (MacLeod et al. 2010)
        assert abs(sf[-1] / expected - 1) < 0.15, (lag, sf[-1], expected)
    assert sf[0] < sf[1] < sf[2] < sf[3]
    assert abs(sf[4] / sf_inf - 1) < 0.1 and abs(sf[3] / sf_inf - 1) < 0.1
    # Bluer when brighter: g varies more than r, i less.
    g = lc.magnitudes("AGN", p, idx, tt, np.zeros(idx.size, int))
    i = lc.magnitudes("AGN", p, idx, tt, np.full(idx.size, 2))
    dev_g, dev_r, dev_i = (
        (x.reshape(n, -1) - x.reshape(n, -1).mean(axis=1, keepdims=True)).ravel()
        for x in (g, m, i))
    assert np.std(dev_g) > np.std(dev_r) > np.std(dev_i)
    assert np.corrcoef(dev_r, dev_g - dev_r)[0, 1] > 0.9


def test_flares_and_outbursts_are_bluer():
    p = _sample("Flare", 100, seed=11)
    idx, zero = np.arange(100), np.zeros(100)
    rise = [lc.baseline_magnitudes("Flare", p, idx, np.full(100, b))
            - lc.magnitudes("Flare", p, idx, zero, np.full(100, b)) for b in range(3)]
    assert np.all(rise[0] > rise[1]) and np.all(rise[1] > rise[2]) and np.all(rise[2] > 0)
    p = _sample("CV", 100, seed=12)
    gr_peak = (lc.magnitudes("CV", p, idx, zero, np.zeros(100, int))
               - lc.magnitudes("CV", p, idx, zero, np.ones(100, int)))
    gr_q = (lc.baseline_magnitudes("CV", p, idx, np.zeros(100, int))
            - lc.baseline_magnitudes("CV", p, idx, np.ones(100, int)))
    assert np.all(gr_peak <= gr_q + 1e-9)
    assert np.allclose(lc.baseline_magnitudes("CV", p, idx, np.ones(100, int)) - 18.0, p["amp"])


def test_cv_outbursts_recur():
    p = _sample("CV", 40, seed=13)
    grid = np.linspace(0.0, 10.0, 8001)[None, :] * p["p_rec"][:, None]
    bright = _grid_mags("CV", p, grid, 1) < (18.0 + p["amp"][:, None] - 1.0)
    starts = (np.diff(bright.astype(int), axis=1) == 1).sum(axis=1)
    assert np.all((starts >= 8) & (starts <= 11))


@pytest.mark.parametrize("cls", CLASSES)
def test_deterministic(cls):
    a = lp.sample_params(cls, 200, np.random.default_rng(14))
    b = lp.sample_params(cls, 200, np.random.default_rng(14))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rng = np.random.default_rng(15)
    idx, dt = rng.integers(0, 200, 5000), rng.uniform(-30, 400, 5000)
    band = rng.integers(0, 3, 5000)
    m1 = lc.magnitudes(cls, a, idx, dt, band)
    m2 = lc.magnitudes(cls, b, idx.copy(), dt.copy(), band.copy())
    assert np.array_equal(m1, m2)
    assert not np.isnan(m1).any()
    # Each point depends only on its own (source, time, band), not on its neighbours.
    sub = slice(1000, 1100)
    assert np.array_equal(lc.magnitudes(cls, a, idx[sub], dt[sub], band[sub]), m1[sub])


def test_hash_uniform_is_uniform_and_fixed():
    seed = np.full(100_000, 12345, dtype=np.uint64)
    u = lc.hash_uniform(seed, np.arange(-50_000, 50_000), 3)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert np.histogram(u, 10, (0, 1))[0].min() > 9_500
    assert lc.hash_uniform(np.array([1], np.uint64), np.array([2]), 3)[0] == pytest.approx(
        lc.hash_uniform(np.array([1], np.uint64), np.array([2]), 3)[0], abs=0)


def _best_time(fn, repeats=3):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@pytest.mark.parametrize("cls", CLASSES)
def test_100k_points_in_under_half_a_second(cls):
    rng = np.random.default_rng(16)
    p = lp.sample_params(cls, 5000, rng)
    idx, dt, band = rng.integers(0, 5000, 100_000), rng.uniform(-50, 500, 100_000), \
        rng.integers(0, 3, 100_000)
    assert _best_time(lambda: lc.magnitudes(cls, p, idx, dt, band)) < 0.5


def test_mag_distribution_slope():
    rng = np.random.default_rng(17)
    m = lp.mag_distribution("SNIa", 200_000, rng, faint_limit=22.5)
    assert m.min() >= lp.BRIGHT_MAG["SNIa"] and m.max() <= 22.5
    frac21 = np.mean(m < 21.0)
    assert frac21 == pytest.approx(1 / lp.count_ratio("SNIa", 22.5), rel=0.03)
    assert np.mean(m < 20.0) / frac21 == pytest.approx(10 ** -0.6, rel=0.05)
    rrl = lp.mag_distribution("RRL", 200_000, rng, faint_limit=22.5)
    assert np.mean(rrl < 21.0) > 2 * frac21  # flatter counts for the halo


# Population -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sky():
    return pp.sample_population(None, None, 12.0, T0, T0 + NIGHT, np.random.default_rng(18),
                                density_scale=0.2)


def test_population_counts_scale_with_density(sky):
    double = pp.sample_population(None, None, 12.0, T0, T0 + NIGHT, np.random.default_rng(19),
                                  density_scale=0.4)
    a, b = sky.counts(), double.counts()
    for name in ("SNIa", "SNII", "CV", "Flare", "RRL", "EB", "DSCT", "LPV", "AGN"):
        assert b[name] / a[name] == pytest.approx(2.0, rel=0.15), name
    assert sum(b.values()) == pytest.approx(2 * sum(a.values()), rel=0.03)
    # At full density the sky holds a few hundred thousand sources.
    full = sum(pp.expected_count(c, T0, T0 + NIGHT) for c in (*VARIABLES, "CV", "Flare"))
    assert 2e5 < full < 6e5


def test_galactic_classes_concentrate_to_the_plane(sky):
    b = SkyCoord(ra=sky.ra_deg * u.deg, dec=sky.dec_deg * u.deg).galactic.b.deg
    low = np.abs(b) < 10.0
    names = sky.class_name
    uniform = np.sin(np.radians(10.0))
    assert np.mean(low[names == "AGN"]) == pytest.approx(uniform, abs=0.02)
    assert np.mean(low[names == "SNIa"]) == pytest.approx(uniform, abs=0.03)
    for name in ("EB", "DSCT", "LPV", "CV", "uLens"):
        assert np.mean(low[names == name]) > 2.5 * uniform, name
    assert np.mean(low[names == "RRL"]) > 1.5 * uniform
    # uLens events come mostly from the bulge.
    lon = SkyCoord(ra=sky.ra_deg * u.deg, dec=sky.dec_deg * u.deg).galactic.l.wrap_at(
        180 * u.deg).deg
    lens = names == "uLens"
    assert np.mean(np.hypot(lon[lens], b[lens]) < 15.0) > 0.5
    # Our fixed rotation agrees with astropy.
    _, b_ours = galactic_lb(sky.ra_deg[:1000], sky.dec_deg[:1000])
    assert np.abs(b_ours - b[:1000]).max() < 1e-6


def test_population_events_are_visible_during_the_run(sky):
    ev = np.isin(sky.class_name, pp.EVENT_CLASSES)
    idx = np.flatnonzero(ev)
    peak = sky.peak_unix(idx)
    best = np.clip(peak, T0, T0 + NIGHT)
    assert np.all(sky.magnitudes(idx, best, 1) <= sky.faint_limit + 1e-9)
    assert np.all(np.isnan(sky.peak_unix(np.flatnonzero(~sky.is_transient))))
    assert np.all(sky.ref_mag <= sky.faint_limit)


def test_population_magnitudes_mix_classes(sky):
    rng = np.random.default_rng(20)
    src = rng.integers(0, sky.size, 100_000)
    t = rng.uniform(T0, T0 + NIGHT, 100_000)
    band = rng.integers(0, 3, 100_000)
    m = sky.magnitudes(src, t, band)
    for k in np.unique(sky.cls[src])[:5]:
        sel = sky.cls[src] == k
        name = CLASSES[k]
        own = lc.magnitudes(name, sky.params[name], sky.local_index[src[sel]],
                            (t[sel] - sky.t_ref_unix[src[sel]]) / pp.DAY_S, band[sel])
        assert np.array_equal(m[sel], own)
    assert np.array_equal(sky.magnitudes(src[:10], t[:10], np.array(list("grigrigrig"))),
                          sky.magnitudes(src[:10], t[:10], np.array([0, 1, 2] * 3 + [0])))
    assert _best_time(lambda: sky.magnitudes(src, t, band)) < 0.5


def test_population_save_load_round_trip(sky, tmp_path):
    path = tmp_path / "sky.npz"
    sky.save(path)
    back = pp.Population.load(path)
    for name in ("cls", "ra_deg", "dec_deg", "t_ref_unix", "ref_mag", "local_index"):
        assert np.array_equal(getattr(sky, name), getattr(back, name))
        assert getattr(sky, name).dtype == getattr(back, name).dtype
    assert (back.t0_unix, back.t1_unix, back.density_scale, back.faint_limit) == (
        sky.t0_unix, sky.t1_unix, sky.density_scale, sky.faint_limit)
    assert sky.params.keys() == back.params.keys()
    rng = np.random.default_rng(21)
    src, t = rng.integers(0, sky.size, 20_000), rng.uniform(T0 - 1e6, T0 + 1e6, 20_000)
    band = rng.integers(0, 3, 20_000)
    assert np.array_equal(sky.magnitudes(src, t, band), back.magnitudes(src, t, band))


def test_population_is_seeded():
    a = pp.sample_population(None, None, 12.0, T0, T0 + NIGHT, np.random.default_rng(22),
                             density_scale=0.02)
    b = pp.sample_population(None, None, 12.0, T0, T0 + NIGHT, np.random.default_rng(22),
                             density_scale=0.02)
    assert np.array_equal(a.ra_deg, b.ra_deg) and np.array_equal(a.t_ref_unix, b.t_ref_unix)


def test_population_selects_fields():
    ra, dec = np.array([10.0, 200.0, 266.4]), np.array([20.0, -30.0, -29.0])
    pop = pp.sample_population(ra, dec, 12.0, T0, T0 + NIGHT, np.random.default_rng(23))
    assert pop.size > 0
    from observatory.sky import in_footprint
    inside = np.zeros(pop.size, dtype=bool)
    for r, d in zip(ra, dec, strict=True):
        inside |= in_footprint(pop.ra_deg, pop.dec_deg, r, d, np.sqrt(12.0))
    assert inside.all()
    # The bulge field (l, b ~ 0, -1) holds far more Galactic sources than the pole-ward ones.
    near_bulge = in_footprint(pop.ra_deg, pop.dec_deg, 266.4, -29.0, np.sqrt(12.0))
    eb = pop.class_name == "EB"
    assert (eb & near_bulge).sum() > 5 * (eb & ~near_bulge).sum()
