"""The planner's view of a finished simulation (brain ask --state DIR): the end state of a
brain simulate --out DIR run, built from its files."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from brain.core.events import Weather
from brain.core.operator import OBJECT_ID, PlanState
from brain.core.safety import weather_verdict
from brain.planner.tools import Validator
from observatory.ephemeris import night_date
from simulator.environment import Environment


def state_from_run(run_dir: str | Path, config, at: float | None = None) -> PlanState:
    """A :class:`PlanState` from a ``brain simulate`` / ``replay`` output: the array as
    it stood at its last exposure (or at ``at``, unix s): objects and their classes,
    spectra taken, each site's weather from the recorded environment. ``true_class`` is
    the simulator's truth and never reaches the planner."""

    d = Path(run_dir)
    if not (d / "metrics.json").is_file():
        raise FileNotFoundError(f"{d} is not a run directory (no metrics.json)")
    t_last = -math.inf
    open_sites: set[str] = set()
    with (d / "observations.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        t_last = max(t_last, float(r["t_end"]))
    t = float(at) if at is not None else t_last
    if not math.isfinite(t):
        raise ValueError(f"{d}/observations.csv holds no exposure: give --at")
    for r in rows:
        if float(r["t_end"]) >= t - 600:
            open_sites.add(r["site"])
    env = Environment.load(d)
    tonight = night_date(config, t)
    sites = {}
    vd = Validator(config)
    for s in config.sites:
        wx = None
        for (_night, sid), series in env.weather.items():
            if sid == s.id and float(series.t_unix[0]) <= t <= float(series.t_unix[-1]) + 600:
                w = series.at(t)
                wx = Weather(t, s.id, w["wind_mps"], w["humidity"], w["rain"], w["cloud"],
                             w["seeing_arcsec"], w["dew_margin_c"])
        v = weather_verdict(config.limits, wx, t)
        eph = vd.night(t).sites[s.id]
        sun = float(eph.sun_alt(t))
        sites[s.id] = {"name": s.name, "open": s.id in open_sites, "safe": v.safe,
                       "rule": v.rule, "held_closed": False,
                       "dark": eph.is_dark(t, config.limits.max_sun_alt_deg),
                       "sun_alt_deg": round(sun, 1)}
    groups = {g.name: {"site": g.site, "paused": False,
                       "phase": "open" if g.site in open_sites else "closed"}
              for g in config.groups}
    objects: dict[str, dict] = {}
    skipped = 0
    with (d / "objects.csv").open() as fh:
        for r in csv.DictReader(fh):
            oid = r["object_id"]
            if not re.match(OBJECT_ID, oid):
                skipped += 1  # a malformed id can never be a tool argument
                continue
            objects[oid] = {"ra_deg": float(r["ra_deg"]), "dec_deg": float(r["dec_deg"]),
                            "n_detections": int(r["n_detections"]),
                            "predicted_class": r["predicted_class"] or None,
                            "p_predicted": float(r["p_predicted"]) if r["p_predicted"]
                            else None, "mag": r.get("mag") and float(r["mag"]),
                            "note": r.get("note") or ""}
    followups: dict[str, str] = {}
    used: dict[str, float] = {}
    fpath = d / "followups.csv"
    if fpath.is_file():
        with fpath.open() as fh:
            for r in csv.DictReader(fh):
                followups[r["object_id"]] = "done"
                site = r["telescope"].split(".", 1)[0]
                if night_date(config, float(r["t_start"])) == tonight:
                    used[site] = used.get(site, 0.0) + float(r["t_end"]) - float(r["t_start"])
    cap = config.followup.max_hours_per_night
    spec_left = {}
    for sp in config.spectrographs:
        span = vd.dark_left(sp.site, t)
        dark = (span[1] - span[0]) if span else 0.0
        spec_left[sp.site] = max(0.0, min(dark, math.inf if cap is None else
                                          cap * 3600 - used.get(sp.site, 0.0)))
    metrics = json.loads((d / "metrics.json").read_text())
    summary = {k: metrics.get(k) for k in ("survey", "transients", "followup", "classifier")}
    summary["skipped_object_ids"] = skipped
    return PlanState(t, f"state {d}", sites, groups, objects, followups, spec_left, None,
                     summary)
