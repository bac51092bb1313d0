"""Survey metrics of a run, computed from the observation log, the environment and the
ephemerides (the definitions of shared/CONTRACTS.md).

Coverage: for each 30-minute window in which every site is dark (windows tile the
all-dark span from its start; an exposure belongs to the window holding its shutter-open
time), the union area of footprints imaged in all three bands. The bound: for the same
window, min(area of fields feasible under the limits from the open sites at mid-window,
sum over open groups of FoV x 1800 s / (exposure + settle + slew over one field side)),
where a group counts as open for the fraction of the window its site is dark and safe.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from simulator.mount import slew_time_s
from simulator.sky import AreaLattice
from simulator.world import OBS_COLUMNS

WINDOW_S = 1800.0


def observations_array(rows: list[tuple]) -> np.ndarray:
    dtype = [("obs_id", "U40"), ("telescope", "U16"), ("site", "U8"), ("group", "i4"),
             ("band", "U1"), ("field_id", "i4"), ("ra_deg", "f8"), ("dec_deg", "f8"),
             ("t_start", "f8"), ("t_end", "f8"), ("alt_deg", "f8"), ("airmass", "f8"),
             ("moon_sep_deg", "f8"), ("sun_alt_deg", "f8"), ("limiting_mag", "f8")]
    assert tuple(n for n, _ in dtype) == OBS_COLUMNS
    return np.array(rows, dtype=dtype) if rows else np.zeros(0, dtype=dtype)


def adjacent_cycle_s(config) -> float:
    """Exposure + settle + slew over one field side: the bound's time per field."""
    side = math.sqrt(config.camera.fov_deg2)
    return (config.survey.exposure_s + config.mount.settle_s
            + float(slew_time_s(side, config.mount)))


def site_open_fraction(config, night, weather, site: str, t0: float, t1: float) -> float:
    """Fraction of [t0, t1) when the site is dark and its weather is safe."""
    from brain.events import Weather
    from brain.safety import weather_verdict

    ts = np.arange(t0, t1, 60.0) + 30.0
    eph = night.sites[site]
    dark = eph.sun_alt(ts) <= config.limits.max_sun_alt_deg
    series = weather[site]
    safe = np.array([weather_verdict(config.limits, Weather(t, site, **series.at(t)), t).safe
                     for t in ts])
    return float(np.mean(dark & safe))


def feasible_fields(config, sky, site: str, t: float) -> np.ndarray:
    lim = config.limits
    ok = sky.alt_deg(site, t) >= lim.min_alt_deg
    ok &= sky.moon_sep_deg(site, t) >= lim.min_moon_sep_deg
    ok &= sky.night.sites[site].sun_alt(t) <= lim.max_sun_alt_deg
    return np.flatnonzero(ok)


def coverage_windows(config, obs: np.ndarray, nights, skies, weathers, lattice: AreaLattice):
    """Per window: start, covered deg2, bound deg2, visible deg2, throughput bound."""
    bands = set(config.camera.bands)
    cycle = adjacent_cycle_s(config)
    fov = config.camera.fov_deg2
    out = []
    for night, sky, weather in zip(nights, skies, weathers, strict=True):
        span = night.all_dark_interval()
        if span is None:
            continue
        n_win = int((span[1] - span[0]) // WINDOW_S)
        for k in range(n_win):
            w0 = span[0] + k * WINDOW_S
            w1 = w0 + WINDOW_S
            sel = obs[(obs["t_start"] >= w0) & (obs["t_start"] < w1)]
            seen = defaultdict(set)
            for f, b in zip(sel["field_id"], sel["band"], strict=True):
                seen[int(f)].add(str(b))
            full = [f for f, bs in seen.items() if bs >= bands]
            covered = lattice.union_deg2(full)
            open_groups, visible = 0.0, []
            for s in config.sites:
                frac = site_open_fraction(config, night, weather, s.id, w0, w1)
                open_groups += frac * s.groups
                if frac > 0:
                    visible.append(feasible_fields(config, sky, s.id, 0.5 * (w0 + w1)))
            visible_deg2 = lattice.union_deg2(np.concatenate(visible)) if visible else 0.0
            throughput = open_groups * fov * WINDOW_S / cycle
            out.append({"t0": w0, "covered_deg2": covered, "visible_deg2": visible_deg2,
                        "throughput_deg2": throughput,
                        "bound_deg2": min(visible_deg2, throughput)})
    return out


def visits_from_observations(obs: np.ndarray) -> np.ndarray:
    """Three-band visits: (field_id, group key, t_start) with every band present."""
    keys = {}
    for row in obs:
        k = (int(row["field_id"]), str(row["site"]), int(row["group"]), float(row["t_start"]))
        keys.setdefault(k, set()).add(str(row["band"]))
    vis = [(k[0], k[3]) for k, bs in keys.items() if len(bs) >= 3]
    return np.array(vis, dtype=[("field_id", "i4"), ("t_start", "f8")])


def revisit_intervals_min(visits: np.ndarray, max_gap_s: float = 6 * 3600) -> np.ndarray:
    """Intervals (min) between consecutive visits of the same field within a night."""
    if visits.size == 0:
        return np.zeros(0)
    v = np.sort(visits, order=["field_id", "t_start"])
    same = v["field_id"][1:] == v["field_id"][:-1]
    dt = np.diff(v["t_start"])
    return dt[same & (dt < max_gap_s)] / 60.0


def stats(values) -> dict[str, float | None]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"median": None, "p10": None, "p90": None}
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90))}
