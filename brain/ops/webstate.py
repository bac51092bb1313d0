"""What the operator web page shows (:mod:`brain.ops.webpage`): one snapshot of the daemon
as plain, JSON-ready data, built on the daemon's loop about once a second.

It reads the core through its public side door (``plan_state`` without its list of
objects: sites, groups, follow-up and budget; the candidates, which number tens of
thousands after a night's first classification, are counted here and only the most
probable are read out) plus the few public attributes a page needs beside it: each
group's field and phase, the scheduler's last visit of each field (the sky map of the
last 30 minutes), the latest weather report of each site and the follow-up manager's
spectra. The devices' up/down state and their own last reported state (``closed``,
``idle``, ``busy``...) come from the device link, handed in by the shell.

**Unsafe but open.** A site whose weather verdict is unsafe while the brain holds it
open, or while any of its telescopes or spectrographs is open (it reports a state other
than ``closed``: a dome stuck open in the rain; or the brain holds its group or
spectrograph open; a device whose link is down counts with its last report) raises a
``critical`` alert with the rule, the devices and how long it has lasted. During an
ordinary close it shows for the seconds the domes take; a dome that does not close keeps
it up. A device reports its state with its heartbeats, which it sends when it has
nothing else to say (docs/protocol.md): in a fast rehearsal a busy telescope's report
lags, a quiet one's (a site closed) is at most a second old.

Non-finite numbers become ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import math
import time

import numpy as np

from brain.core.safety import weather_verdict
from brain.core.stream import quantize_prob, take_snapshot
from observatory.taxonomy import CLASSES

COVERAGE_S = 1800.0  # the sky map: fields visited (all three bands) in the last 30 minutes
TOP_CANDIDATES = 30
RECORDS_SHOWN = 20
WEATHER_FIELDS = ("wind_mps", "humidity", "rain", "cloud", "seeing_arcsec", "dew_margin_c")


def clean(x):
    """``x`` as plain JSON types, NaN and infinities as None (called once a second on
    the daemon's loop: the common types first, by exact type)."""
    t = type(x)
    if t is float:
        return x if math.isfinite(x) else None
    if t is dict:
        return {k if type(k) is str else str(k): clean(v) for k, v in x.items()}
    if t is str or t is bool or t is int or x is None:
        return x
    if t is list or t is tuple:
        return [clean(v) for v in x]
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    if isinstance(x, float | np.floating):
        return clean(float(x))
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, int):
        return int(x)
    return str(x)


class WebState:
    """Builds the page's snapshots; remembers since when each site is unsafe but open."""

    def __init__(self, config, hosting: str):
        self.config = config
        self.hosting = hosting
        self.site_names = {s.id: s.name for s in config.sites}
        self._since: dict[str, float] = {}  # site -> world time it became unsafe but open

    def build(self, core, t: float, devices: dict[str, dict], planner: str,
              session: str = "") -> dict:
        """The snapshot at world time ``t``. ``devices``: id -> ``kind``, ``site``,
        ``up`` and ``state`` (the device's last report, ``""`` when none)."""
        ps = core.plan_state(t, objects=False)
        lim = self.config.limits
        # Open in the brain's view: a group not closed, a spectrograph it opened.
        held = {d for g in core.groups if g.phase != "closed" for d in g.devices}
        if core.followup is not None:
            held |= {d for d, st in core.followup.specs.items() if st.is_open}
        sites = [self._site(core, sid, info, t, devices, held)
                 for sid, info in ps.sites.items()]
        alerts = self._alerts(sites, t)
        groups = []
        for g in core.groups:
            f = g.field
            groups.append({
                "name": g.name, "site": g.site, "phase": g.phase, "paused": g.paused,
                "up": ps.groups[g.name]["up"],
                "field": None if f is None else {"id": int(f),
                                                 "ra_deg": float(core.grid.ra_deg[f]),
                                                 "dec_deg": float(core.grid.dec_deg[f])},
                "parked": g.pointing_xyz is None,
                "devices": [{"id": d, **devices.get(d, {"up": False, "state": ""})}
                            for d in g.devices]})
        grouped = {d for g in core.groups for d in g.devices}
        others = [{"id": d, **v} for d, v in sorted(devices.items()) if d not in grouped]
        coverage = self._coverage(core, t)
        fields = coverage.pop("fields")  # plain and finite already: the bulk, not walked
        snap = clean({
            "t": t, "t_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
            "built_wall": time.time(), "session": session, "hosting": self.hosting,
            "planner": planner, "alerts": alerts, "sites": sites,
            "limits": {"max_wind_mps": lim.max_wind_mps, "max_humidity": lim.max_humidity,
                       "rain_ok": lim.rain_ok, "max_weather_age_s": lim.max_weather_age_s,
                       "min_alt_deg": lim.min_alt_deg,
                       "max_sun_alt_deg": lim.max_sun_alt_deg},
            "groups": groups, "others": others, "coverage": coverage,
            "candidates": self._candidates(core, t, ps.followups),
            "followup": self._followup(core, ps), "summary": ps.summary,
            "region": ps.region})
        snap["coverage"]["fields"] = fields
        return snap

    def _site(self, core, sid: str, info: dict, t: float, devices: dict[str, dict],
              held: set[str]) -> dict:
        wx = core.sites[sid].weather
        verdict = weather_verdict(self.config.limits, wx, t)
        weather = None
        if wx is not None:
            weather = {k: getattr(wx, k) for k in WEATHER_FIELDS} | {"age_s": t - wx.t}
        open_devices = sorted(
            d + ("" if v["up"] else " (link down)") for d, v in devices.items()
            if v.get("site") == sid and v.get("kind") in ("telescope", "spectrograph")
            and (v.get("state") not in ("closed", "", None) or d in held))
        return {"id": sid, "name": self.site_names.get(sid, sid), "open": info["open"],
                "safe": verdict.safe, "rule": verdict.rule, "detail": verdict.detail,
                "dark": info["dark"], "sun_alt_deg": info.get("sun_alt_deg"),
                "held_closed": info["held_closed"], "weather": weather,
                "open_devices": open_devices}

    def _alerts(self, sites: list[dict], t: float) -> list[dict]:
        alerts = []
        for s in sites:
            if s["safe"] or not (s["open"] or s["open_devices"]):
                self._since.pop(s["id"], None)
                continue
            since = self._since.setdefault(s["id"], t)
            what = (", ".join(s["open_devices"]) if s["open_devices"]
                    else "the brain holds it open")
            alerts.append({
                "level": "critical", "kind": "unsafe_open", "site": s["id"],
                "since_s": t - since,
                "text": f"{s['id']} ({s['name']}) is UNSAFE ({s['rule']}"
                        + (f": {s['detail']}" if s["detail"] not in ("", s["rule"]) else "")
                        + f") but OPEN: {what}"})
        return alerts

    @staticmethod
    def _candidates(core, t: float, followups: dict[str, str]) -> dict:
        """The classified candidates (the core's one rule): how many of each predicted
        class, and the ``TOP_CANDIDATES`` most probable, with their photometry."""
        rows = core.candidates(t)
        prob = core.obj_prob
        if rows.size == 0 or prob.ndim != 2 or not prob.shape[1]:
            return {"n": 0, "classes": {}, "top": []}
        # at the precision of the snapshot (and so of plan_state): steps of 1/255
        p = quantize_prob(prob[rows])
        best = p.argmax(axis=1)
        p_best = np.round(p[np.arange(rows.size), best].astype(float), 4)
        counts = np.bincount(best, minlength=len(CLASSES))
        classes = {CLASSES[k]: int(n) for k, n in enumerate(counts) if n and k < len(CLASSES)}
        ids = core.associator.ids[rows]
        top = np.lexsort((ids, -p_best))[:TOP_CANDIDATES]
        snap = take_snapshot(t, core.associator, np.sort(rows[top]), math.inf, math.inf)
        out = []
        for k in range(len(snap.object_id)):
            c = int(np.argmax(snap.prob[k]))
            oid = f"o{int(snap.object_id[k]):07d}"
            out.append({"object_id": oid, "predicted_class": CLASSES[c],
                        "p_predicted": round(float(snap.prob[k, c]), 4),
                        "mag": round(float(snap.mag[k]), 2),
                        "n_detections": int(snap.n_det[k]),
                        "ra_deg": round(float(snap.ra_deg[k]), 5),
                        "dec_deg": round(float(snap.dec_deg[k]), 5),
                        "followup": followups.get(oid, "")})
        out.sort(key=lambda o: (-o["p_predicted"], o["object_id"]))
        return {"n": int(rows.size), "classes": classes, "top": out}

    def _coverage(self, core, t: float) -> dict:
        st = core.scheduler.state
        recent = np.flatnonzero((st.last_visit >= t - COVERAGE_S) & (st.last_visit <= t))
        ra, dec = core.grid.ra_deg[recent], core.grid.dec_deg[recent]
        age = t - st.last_visit[recent]
        grp = st.last_group[recent]
        fields = [[a, b, c, g] for a, b, c, g in zip(
            np.round(ra, 3).tolist(), np.round(dec, 3).tolist(), np.round(age, 1).tolist(),
            grp.tolist(), strict=True)]
        return {"window_s": COVERAGE_S, "field_side_deg": core.grid.side_deg,
                "area_deg2": len(recent) * self.config.camera.fov_deg2,
                "groups": [g.name for g in core.groups], "fields": fields}

    @staticmethod
    def _followup(core, ps) -> dict:
        fu = core.followup
        out = {"running": fu is not None, "spectrographs": [], "records": [],
               "requested": [oid for oid, s in ps.followups.items() if s == "requested"],
               "spec_left_s": ps.spec_left_s}
        if fu is None:
            return out
        for dev, st in sorted(fu.specs.items()):
            out["spectrographs"].append({
                "id": dev, "site": st.site, "open": st.is_open,
                "target": (st.busy or {}).get("target_id"), "used_s": st.used_s,
                "left_s": ps.spec_left_s.get(st.site)})
        recs = sorted(fu.records.values(), key=lambda r: r.t_cmd)[-RECORDS_SHOWN:]
        out["records"] = [{"target_id": r.target_id, "object_id": f"o{r.object_id:07d}",
                           "telescope": r.telescope, "status": r.status, "label": r.label,
                           "mag": r.mag, "predicted_class": r.predicted_class,
                           "p_predicted": r.p_predicted, "t_start": r.t_start,
                           "t_end": r.t_end} for r in reversed(recs)]
        return out
