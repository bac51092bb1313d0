"""The daemon shell's night files: the night's report.html (brain.ops.report), and its
observations.csv, followups.csv, objects.csv, labelled.csv and metrics.json, from the
journal and the core (written by the report night job, brain.ops.nightjobs).

:func:`gather` runs on the daemon's loop and copies what the report needs (a consistent
snapshot, in well under a second); :func:`write_night` runs on a worker thread and does
the slow part (coverage windows, figures) from the copy alone.

What the daemon cannot know is said so: the classifier is scored against spectra, not
against a simulator's truth (``macro_f1`` is null), and a spectrum's reward is the one
its label earns (docs/contracts.md's table, ×2 before the peak as the spectrum tells it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from brain.core.followup import science_reward
from brain.ops.report import ReportInputs, write_report
from brain.ops.runfiles import (
    _clean,
    write_followup_rows,
    write_labelled,
    write_objects,
    write_observations,
)
from brain.ops.survey_metrics import (
    coverage_windows,
    observations_array,
    revisit_intervals_min,
    site_open_fraction,
    stats,
    visits_from_observations,
)
from drivers.protocol import weather_values
from observatory.ephemeris import night_span
from observatory.sky import AreaLattice
from observatory.taxonomy import CLASSES, TRANSIENTS

PAGE = 12  # light curves on the report's page


class JournalWeather:
    """A site's journalled weather reports as a series (``at(t)``, as the simulator's):
    the latest report at or before ``t``; none, or one older than the limit, reads as
    unsafe (rain), as the safety rules treat missing data."""

    UNSAFE: ClassVar[dict] = {"wind_mps": 99.0, "humidity": 1.0, "rain": True, "cloud": 1.0,
              "seeing_arcsec": 9.0, "dew_margin_c": 0.0, "station_safe": False,
              "station_reason": "no fresh weather report"}

    def __init__(self, reports: list[tuple[float, dict]], max_age_s: float):
        self.t = np.array([t for t, _ in reports], dtype=float)
        self.data = [d for _, d in reports]
        self.max_age_s = max_age_s

    def at(self, t: float) -> dict:
        k = int(np.searchsorted(self.t, t, side="right")) - 1
        if k < 0 or t - self.t[k] > self.max_age_s:
            return dict(self.UNSAFE)
        return weather_values(self.data[k])


class FrozenCurves:
    """The light curves of a few objects, copied (the associator keeps growing)."""

    def __init__(self, associator, ids: np.ndarray):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.arrays = associator.history_by_id(self.ids) if self.ids.size else (
            np.zeros(0, np.int64), *(np.zeros(0) for _ in range(4)))
        self.prob = {int(i): associator.prob_by_id(int(i)) for i in self.ids}

    def history_by_id(self, ids: np.ndarray):
        keep = np.isin(self.arrays[0], ids)
        return tuple(a[keep] for a in self.arrays)

    def prob_by_id(self, object_id: int):
        p = self.prob.get(int(object_id))
        return None if p is None else p.copy()


@dataclass
class NightSnapshot:
    night: str
    config: object
    grid: object
    eph: object
    sky: object
    t0: float
    t1: float
    obs_rows: list
    weather: dict
    followups: list
    objects: list
    core: object  # a frozen stand-in: classes, the page's light curves, probabilities
    decision_ms: dict
    journal: str


def gather(daemon, night: str) -> NightSnapshot:
    """On the loop: the night's journal rows and the core's state, copied."""

    core, j, config = daemon.core, daemon.journal, daemon.config
    eph, sky = core.nights.get(night)
    t0, t1 = night_span(config, night)
    obs_rows = j.observations(t0, t1)
    weather: dict[str, list] = {s.id: [] for s in config.sites}
    for t, device, data in j.events_named("weather", t0 - 3600.0, t1):
        site = device.split(".", 1)[0]
        if site in weather:
            weather[site].append((t, data))
    # Follow-ups: what the spectra said, joined with what the brain asked for.
    records = core.followup.records if core.followup is not None else {}
    s = config.followup
    rows = []
    for r in j.spectra(t0, t1):
        if r["status"] != "done":
            continue
        rec = records.get(r["target_id"])
        res = r["result"]
        label = res.get("label") or ""
        before = bool(res.get("before_peak", False))
        rows.append({
            "target_id": r["target_id"],
            "object_id": f"o{rec.object_id:07d}" if rec is not None else "",
            "telescope": r["device"], "t_start": float(res.get("t_start", r["t_sent"])),
            "t_end": float(res.get("t_end", r["t_end"] or r["t_sent"])),
            "mag": float(rec.mag) if rec is not None else math.nan,
            "predicted_class": rec.predicted_class if rec is not None else "",
            "p_predicted": float(rec.p_predicted) if rec is not None else math.nan,
            "true_class": label, "label": label, "before_peak": before,
            "reward": science_reward(label or None, label or None, before, s.reward,
                                     s.before_peak_factor),
            "_hours": (float(r["t_end"] or r["t_sent"]) - float(r["t_sent"])) / 3600.0})
    # Candidates (classified, enough detections), labelled ones and transients first.
    assoc = core.associator
    prob = core.obj_prob
    ndet = assoc.n_detections()
    cand = core.candidates()
    names = np.asarray(CLASSES)
    pred = prob[cand].argmax(axis=1) if cand.size else np.zeros(0, int)
    objects = [(f"o{assoc.ids[c]:07d}", float(assoc.ra[c]), float(assoc.dec[c]),
                int(ndet[c]), str(names[pred[k]]), float(prob[c, pred[k]]), "")
               for k, c in enumerate(cand)]
    labels = {r["object_id"]: r["label"] for r in rows if r["label"]}
    page = sorted(objects, key=lambda r: (labels.get(r[0]) not in TRANSIENTS,
                                          r[4] not in TRANSIENTS, r[0] not in labels,
                                          -r[3]))[:PAGE]
    ids = np.array([int(r[0][1:]) for r in page], dtype=np.int64)
    frozen = SimpleNamespace(classifier=SimpleNamespace(classes=list(CLASSES)),
                             associator=FrozenCurves(assoc, ids),
                             obj_prob=prob[:assoc.n_objects].copy())
    out = daemon.nightjobs.night_dir(night) if daemon.nightjobs else None
    if out is not None and core.followup is not None:
        out.mkdir(parents=True, exist_ok=True)
        # Tonight's labels only: each night's folder adds its own to the retraining.
        tonight = {int(r["object_id"][1:]): r["label"] for r in rows
                   if r["label"] and r["object_id"]}
        write_labelled(out / "labelled.csv", assoc, tonight)
    return NightSnapshot(night, config, core.grid, eph, sky, t0, t1, obs_rows, weather, rows,
                         objects, frozen, core.decision_percentiles(), str(j.path))


def night_metrics(snap: NightSnapshot, obs: np.ndarray, windows: list,
                  weathers: dict[str, JournalWeather]) -> dict:
    """metrics.json's keys for a daemon night (docs/contracts.md), from the snapshot."""
    config, eph = snap.config, snap.eph
    open_s = 0.0
    for s in config.sites:
        frac = site_open_fraction(config, eph, weathers, s.id, eph.t_begin, eph.t_end)
        open_s += frac * (eph.t_end - eph.t_begin) * s.groups * len(config.camera.bands)
    shutter_s = float(np.sum(obs["t_end"] - obs["t_start"])) if obs.size else 0.0
    visits = visits_from_observations(obs)
    revisits = revisit_intervals_min(visits)
    cov = [w["covered_deg2"] for w in windows]
    bound = [w["bound_deg2"] for w in windows]
    rows = snap.followups
    hours = sum(r["_hours"] for r in rows)
    reward = float(sum(r["reward"] for r in rows))
    confirmed: dict[str, int] = {}
    for r in rows:
        if r["label"] and r["label"] == r["predicted_class"]:
            confirmed[r["label"]] = confirmed.get(r["label"], 0) + 1
    open_h = 0.0
    for sp in config.spectrographs:
        frac = site_open_fraction(config, eph, weathers, sp.site, eph.t_begin, eph.t_end)
        open_h += frac * (eph.t_end - eph.t_begin) / 3600.0
    return {
        "night": snap.night, "n_nights": 1, "config": config.name, "journal": snap.journal,
        "survey": {
            "coverage_deg2_per_30min": dict(stats(cov), windows=len(windows)),
            "coverage_bound_deg2_per_30min": stats(bound),
            "coverage_fraction_of_bound": (float(np.median(cov) / np.median(bound))
                                           if windows and np.median(bound) > 0 else None),
            "open_shutter_fraction": shutter_s / open_s if open_s > 0 else None,
            "median_slew_s": None, "visits": int(visits.size), "exposures": int(obs.size),
            "median_revisit_min": float(np.median(revisits)) if revisits.size else None,
            "fields_visited": int(np.unique(visits["field_id"]).size) if visits.size else 0,
        },
        "scheduler": {"decision_ms": snap.decision_ms},
        "transients": {"candidates": len(snap.objects)},
        "classifier": {"macro_f1": None, "macro_f1_first_night": None,
                       "confirmed_by_spectra": int(sum(confirmed.values())),
                       "labelled": sum(1 for r in rows if r["label"])},
        "followup": {"spectra": len(rows), "hours": hours, "reward": reward,
                     "reward_per_hour": reward / hours if hours > 0 else None,
                     "confirmed": dict(sorted(confirmed.items())),
                     "labelled": sum(1 for r in rows if r["label"]),
                     "open_hours": open_h},
    }


def write_night(out: Path, snap: NightSnapshot) -> dict:
    """The night's files in ``out``; returns what the job journals."""

    out.mkdir(parents=True, exist_ok=True)
    config = snap.config
    obs = observations_array(snap.obs_rows)
    weathers = {k: JournalWeather(v, config.limits.max_weather_age_s)
                for k, v in snap.weather.items()}
    windows = coverage_windows(config, obs, [snap.eph], [snap.sky], [weathers],
                               AreaLattice(snap.grid))
    metrics = night_metrics(snap, obs, windows, weathers)
    write_observations(out / "observations.csv", snap.obs_rows)
    write_followup_rows(out / "followups.csv", snap.followups)
    write_objects(out / "objects.csv", snap.objects)
    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2) + "\n")
    figures = write_report(out, ReportInputs(
        config=config, grid=snap.grid, core=snap.core, nights=[snap.eph], metrics=metrics,
        windows=windows, obs=obs, objects=snap.objects, followups=snap.followups,
        title=f"{config.name}, night of {snap.night} (daemon)", weathers=[weathers]))
    s = metrics["survey"]
    return {"dir": str(out), "figures": len(figures), "exposures": s["exposures"],
            "visits": s["visits"], "coverage_median_deg2": s["coverage_deg2_per_30min"]
            ["median"], "spectra": metrics["followup"]["spectra"]}
