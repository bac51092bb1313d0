"""Survey metrics of a run, computed from the observation log, the environment and the
ephemerides (the definitions of docs/contracts.md).

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

from brain.core.events import Weather
from brain.core.followup import followup_rows, followup_summary
from brain.core.safety import weather_verdict
from observatory.mount import slew_time_s
from observatory.records import observations_array
from observatory.sky import AreaLattice
from observatory.taxonomy import CLASSES, TRANSIENTS

WINDOW_S = 1800.0


def adjacent_cycle_s(config) -> float:
    """Exposure + settle + slew over one field side: the bound's time per field."""
    side = math.sqrt(config.camera.fov_deg2)
    return (config.survey.exposure_s + config.mount.settle_s
            + float(slew_time_s(side, config.mount)))


def site_open_fraction(config, night, weather, site: str, t0: float, t1: float) -> float:
    """Fraction of [t0, t1) when the site is dark and its weather is safe."""

    ts = np.arange(t0, t1, 60.0) + 30.0
    eph = night.sites[site]
    dark = eph.is_dark(ts, config.limits.max_sun_alt_deg)
    series = weather[site]
    safe = np.array([weather_verdict(config.limits, Weather(t, site, **series.at(t)), t).safe
                     for t in ts])
    return float(np.mean(dark & safe))


def feasible_fields(config, sky, site: str, t: float) -> np.ndarray:
    lim = config.limits
    ok = sky.alt_deg(site, t) >= lim.min_alt_deg
    ok &= sky.moon_sep_deg(site, t) >= lim.min_moon_sep_deg
    ok &= sky.night.sites[site].is_dark(t, lim.max_sun_alt_deg)
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


def run_metrics(result, policy: str, config_name: str, lattice: AreaLattice):
    """metrics.json content, plus the per-window table and the observation array."""
    config, world, core = result.config, result.world, result.core
    obs = observations_array(world.observations)
    nights = [n.night for n in result.nights]
    skies = [result.core.nights.get(n.date)[1] for n in result.nights]
    weathers = [{s.id: result.env.weather[(k, s.id)] for s in config.sites}
                for k in range(len(nights))]
    windows = coverage_windows(config, obs, nights, skies, weathers, lattice)
    visits = visits_from_observations(obs)
    revisits = revisit_intervals_min(visits)
    open_s = 0.0
    for night, weather in zip(nights, weathers, strict=True):
        for s in config.sites:
            frac = site_open_fraction(config, night, weather, s.id, night.t_begin, night.t_end)
            open_s += frac * (night.t_end - night.t_begin) * s.groups * len(config.camera.bands)
    shutter_s = float(np.sum(obs["t_end"] - obs["t_start"])) if obs.size else 0.0
    slews = world.slew_durations()
    cov = [w["covered_deg2"] for w in windows]
    transients, classifier, objects = transient_metrics(result)
    metrics = {
        "seed": result.env.seed, "n_nights": result.env.nights,
        "nights": night_rows(result, obs, windows), "policy": policy,
        "config": config_name, "start": result.env.start,
        "weather": result.env.weather_mode,
        "survey": {
            "coverage_deg2_per_30min": dict(stats(cov), windows=len(windows)),
            "coverage_bound_deg2_per_30min": stats([w["bound_deg2"] for w in windows]),
            "coverage_fraction_of_bound": (float(np.median(cov) / np.median(
                [w["bound_deg2"] for w in windows])) if windows else None),
            "open_shutter_fraction": shutter_s / open_s if open_s > 0 else 0.0,
            "median_slew_s": float(np.median(slews)) if slews.size else None,
            "visits": int(visits.size),
            "exposures": int(obs.size),
            "aborted_exposures": int(world.aborted),
            "median_revisit_min": float(np.median(revisits)) if revisits.size else None,
            "revisit_min": stats(revisits),
            "fields_visited": int(np.unique(visits["field_id"]).size) if visits.size else 0,
            "median_limiting_mag": {b: float(np.median(obs["limiting_mag"][obs["band"] == b]))
                                    for b in config.camera.bands if np.any(obs["band"] == b)},
        },
        "scheduler": {"decision_ms": core.decision_percentiles(),
                      "decisions": core.decisions,
                      "refusals": dict(core.refusals),
                      "safety_vetoes": dict(core.vetoes)},
        "transients": transients,
        "classifier": classifier,
        "followup": followup_metrics(result),
        "sim": {"sim_seconds": result.sim_seconds, "wall_seconds": result.wall_seconds,
                "speedup": result.sim_seconds / max(result.wall_seconds, 1e-9)},
    }
    return metrics, windows, obs, objects


def night_rows(result, obs: np.ndarray, windows: list[dict]) -> list[dict]:
    """metrics.json's ``nights``: one entry per night (docs/contracts.md)."""
    pop = result.env.population
    fu = result.core.followup
    spec_log = result.world.spec.log if (fu is not None and result.world.spec) else []
    frows = followup_rows(fu, spec_log) if fu is not None else []
    out = []
    for n in result.nights:
        t0, t1 = n.night.t_begin, n.night.t_end
        cov = [w["covered_deg2"] for w in windows if t0 <= w["t0"] < t1]
        exp = int(np.sum((obs["t_start"] >= t0) & (obs["t_start"] < t1))) if obs.size else 0
        mine = [r for r in frows if t0 <= r["t_end"] < t1]
        real = n.cand_truth >= 0
        f1 = f1_2 = None
        transient_frac = None
        if pop is not None and n.cand_ids.size:
            true_cls = pop.cls[np.maximum(n.cand_truth, 0)]
            f1 = macro_f1(true_cls[real], n.cand_pred[real])
            two = real & (n.cand_nights >= 2)
            f1_2 = macro_f1(true_cls[two], n.cand_pred[two])
            is_tr = np.isin(np.asarray(CLASSES)[true_cls], TRANSIENTS) & real
            transient_frac = float(is_tr.mean())
        out.append({"date": n.date, "wall_s": round(n.wall_s, 2), "exposures": exp,
                    "coverage_deg2_per_30min": float(np.median(cov)) if cov else None,
                    "candidates": int(n.cand_ids.size), "candidates_new": n.candidates_new,
                    "transient_fraction": transient_frac,
                    "classified": n.classified, "spectra": len(mine),
                    "reward": float(sum(r["reward"] for r in mine)),
                    "macro_f1": f1, "macro_f1_two_nights": f1_2,
                    "objects": n.closed.get("objects"),
                    "detections_in_memory": n.closed.get("window")})
    return out


def macro_f1(y, p) -> float | None:
    """Macro-F1 over the classes present in the truth ``y`` (None without data)."""
    from sklearn.metrics import f1_score  # lazy: heavy optional library

    y, p = np.asarray(y), np.asarray(p)
    return (float(f1_score(y, p, labels=np.unique(y), average="macro")) if y.size
            else None)


def transient_metrics(result) -> tuple[dict, dict, list[tuple]]:
    """Transient and classifier keys of metrics.json, and the rows of objects.csv.

    ``injected``: transient events of the simulated sky bright enough at some time of
    the run (whole sky); ``detected``: those with at least one detection; ``candidates``:
    the candidates at the end of the run (new, or changed beyond their history). The
    classifier is scored at the end of the run against the simulator's truth (artefacts
    excluded), on every candidate's whole light curve and on its first night alone.
    ``objects.csv`` lists every object of the catalogue with enough detections, with
    its latest classification (the known sky and the candidates).
    """
    core, pop = result.core, result.env.population
    assoc = core.associator
    if pop is None:
        return ({"injected": 0, "detected": 0, "candidates": 0},
                {"macro_f1": None, "macro_f1_first_night": None}, [])
    is_tr = np.isin(np.asarray(CLASSES)[pop.cls], TRANSIENTS)
    seen = np.flatnonzero(assoc.sources_seen)
    core.classify_candidates()
    cand = core.candidates()
    truth_obj = assoc.truth[cand]
    prob = core.obj_prob[cand] if cand.size else np.zeros((0, len(CLASSES)))
    pred = prob.argmax(axis=1) if cand.size else np.zeros(0, dtype=int)
    real = truth_obj >= 0
    true_cls = np.where(real, pop.cls[np.maximum(truth_obj, 0)], -1)

    first_f1 = None
    if cand.size:
        obj, mjd, band, mag, err = assoc.history(cand)
        local = np.searchsorted(cand, obj)
        t_first = assoc.first_mjd[cand].astype(float)
        early = mjd - t_first[local] < 0.6
        counts = np.bincount(local[early], minlength=cand.size)
        ok = (counts >= core.config.transients.min_detections) & real
        if ok.any():
            keep = early & ok[local]
            ids, lc_local = np.unique(local[keep], return_inverse=True)
            radec = np.stack([assoc.cat["ra_deg"][cand[ids]], assoc.cat["dec_deg"][cand[ids]]],
                             axis=1)
            ref = assoc.cat["ref"][cand[ids]].astype(np.float64)
            p1 = core.classifier.predict(lc_local, mjd[keep], band[keep], mag[keep], err[keep],
                                         ids.size, radec, ref).argmax(axis=1)
            first_f1 = macro_f1(true_cls[ids], p1)
    transients = {"injected": int(is_tr.sum()),
                  "detected": int(is_tr[seen[seen < is_tr.size]].sum()),
                  "candidates": int(cand.size),
                  "candidates_transient": int(np.sum(real & is_tr[np.maximum(truth_obj, 0)])),
                  "candidates_bogus": int(np.sum(~real)),
                  "sources_detected": int(seen.size)}
    classifier = {"macro_f1": macro_f1(true_cls[real], pred[real]),
                  "macro_f1_first_night": first_f1,
                  "classified": int(real.sum())}
    names = np.asarray(CLASSES)
    every = np.flatnonzero(assoc.n_detections() >= core.config.transients.min_detections)
    p_all = assoc.prob[every]
    done = p_all.sum(axis=1) > 0
    k_all = p_all.argmax(axis=1)
    t_all = assoc.truth[every]
    rows = [(f"o{assoc.ids[c]:07d}", float(assoc.ra[c]), float(assoc.dec[c]),
             int(assoc.n_detections()[c]), names[k_all[k]] if done[k] else "",
             float(p_all[k, k_all[k]]) if done[k] else float("nan"),
             names[pop.cls[t_all[k]]] if t_all[k] >= 0 else "bogus",
             float(assoc.first_mjd[c]), float(assoc.last_mjd[c]), int(assoc.n_nights[c]))
            for k, c in enumerate(every)]
    return transients, classifier, rows


def followup_metrics(result) -> dict:
    """The follow-up keys of metrics.json (zeros when the run had no follow-up)."""

    manager = result.core.followup
    if manager is None or result.world.spec is None:
        return {"spectra": 0, "hours": 0.0, "reward": 0.0, "reward_per_hour": None,
                "confirmed": {}}
    return followup_summary(manager, followup_rows(manager, result.world.spec.log))
