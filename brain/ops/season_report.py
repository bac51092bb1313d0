"""The report's measured conditions and its season section (brain.ops.report).

Conditions, per night and site: hours of astronomical dark, hours of it lost to unsafe
weather (the core's safety rules, ``brain.core.safety.weather_verdict``, applied to the
weather series minute by minute, as the coverage bound does) and why, the median cloud,
the moon, the depth reached (median limiting magnitude per band), the notable
transients that got spectra. Which coverage windows had every site dark *and* safe: the
coverage goal is measured over those alone (docs/season.md, "The season report").

The season section (runs of two nights or more): the per-night tables and three
figures: follow-up yield by night, new candidates and macro-F1 by night, and the
season's coverage and depth map."""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brain.core.events import Weather
from brain.core.safety import weather_verdict
from brain.ops.survey_metrics import WINDOW_S
from observatory.taxonomy import TRANSIENTS

SEASON_FIGURES = ("season_followup.png", "season_candidates.png", "season_depth.png")
STEP_S = 60.0  # the weather is sampled each minute (as survey_metrics.site_open_fraction)
FULL = 1.0 - 1e-9  # a site open for the whole window


def _plt():
    import matplotlib  # lazy: heavy optional library

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy optional library

    return plt


def _safe(config, series, site: str, ts: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per sample time: safe or not, and the safety rule that failed ("ok" where none)."""
    verdicts = [weather_verdict(config.limits, Weather(t, site, **series.at(t)), t)
                for t in ts]
    return np.array([v.safe for v in verdicts], bool), [v.rule for v in verdicts]


@dataclass
class SiteNight:
    """One site's night: dark hours, of them lost to weather (and why), median cloud."""

    site: str
    dark_h: float = 0.0
    lost_h: float = 0.0
    reasons: dict[str, float] = field(default_factory=dict)  # reason -> hours
    cloud: float | None = None

    @property
    def open_h(self) -> float:
        return self.dark_h - self.lost_h

    def text(self) -> str:
        if self.dark_h <= 0:
            return f"{self.site}: no dark time"
        why = ", ".join(f"{k} {v:.1f} h" for k, v in sorted(self.reasons.items(),
                                                         key=lambda kv: -kv[1]))
        cloud = "" if self.cloud is None else f", cloud {self.cloud:.0%}"
        return (f"{self.site}: dark {self.dark_h:.1f} h, lost {self.lost_h:.1f} h"
                + (f" ({why})" if why else "") + cloud)


def site_nights(config, night, weather) -> dict[str, SiteNight]:
    """Each site's dark and weather-lost hours in ``night`` (``weather``: site ->
    series with ``at(t)``; None: the weather is not known, nothing is counted lost)."""
    out = {}
    for s in config.sites:
        ivs = night.dark.get(s.id, [])
        ts = np.concatenate([np.arange(a, b, STEP_S) + 0.5 * STEP_S for a, b in ivs]
                            or [np.zeros(0)])
        sn = SiteNight(s.id, dark_h=ts.size * STEP_S / 3600.0)
        if weather is not None and ts.size:
            safe, reasons = _safe(config, weather[s.id], s.id, ts)
            lost = Counter(r for r, ok in zip(reasons, safe, strict=True) if not ok)
            sn.lost_h = float((~safe).sum()) * STEP_S / 3600.0
            sn.reasons = {k: v * STEP_S / 3600.0 for k, v in lost.items()}
            sn.cloud = float(np.median([weather[s.id].at(t)["cloud"] for t in ts[::10]]))
        out[s.id] = sn
    return out


def window_sites(config, nights, weathers, windows) -> list[dict[str, float]]:
    """Per coverage window: each site's fraction of it dark and safe."""
    out = []
    for w in windows:
        w0 = w["t0"]
        k = next((i for i, n in enumerate(nights) if n.t_begin <= w0 < n.t_end), None)
        ts = np.arange(w0, w0 + WINDOW_S, STEP_S) + 0.5 * STEP_S
        fr = {}
        for s in config.sites:
            if k is None:
                fr[s.id] = 0.0
                continue
            dark = nights[k].sites[s.id].is_dark(ts, config.limits.max_sun_alt_deg)
            safe, _ = _safe(config, weathers[k][s.id], s.id, ts)
            fr[s.id] = float(np.mean(dark & safe))
        out.append(fr)
    return out


@dataclass
class Measured:
    """What the goals are measured over: the windows with every site dark and safe,
    the sites' nights, the shutter and spectroscopic hours per site."""

    windows: list
    sites_open: list[dict[str, float]] | None  # per window (None: weather unknown)
    nights: list[dict[str, SiteNight]]
    shutter_h: dict[str, float]  # per site, every camera's open shutter
    spectro_h: dict[str, float]  # per spectrograph site, hours of spectra

    def valid(self) -> list[bool]:
        if self.sites_open is None:
            return [False] * len(self.windows)
        return [all(v >= FULL for v in fr.values()) for fr in self.sites_open]

    def excluded_by_site(self) -> dict[str, int]:
        """Per site, the windows in which it was not open throughout."""
        c: Counter = Counter()
        for fr in self.sites_open or []:
            c.update(s for s, v in fr.items() if v < FULL)
        return dict(sorted(c.items(), key=lambda kv: -kv[1]))

    def site_total(self, site: str, what: str) -> float:
        return sum(getattr(n[site], what) for n in self.nights if site in n)


def measure(config, nights, weathers, windows, obs, followups) -> Measured:
    """The conditions of every night (``weathers``: per night, site -> series; None
    where the weather is not known)."""
    if weathers is None:
        sites_open, per_night = None, [site_nights(config, n, None) for n in nights]
    else:
        sites_open = window_sites(config, nights, weathers, windows)
        per_night = [site_nights(config, n, w) for n, w in zip(nights, weathers, strict=True)]
    shutter = {s.id: 0.0 for s in config.sites}
    if obs.size:
        for s in config.sites:
            sel = obs["site"] == s.id
            shutter[s.id] = float(np.sum(obs["t_end"][sel] - obs["t_start"][sel])) / 3600
    spectro = {sp.site: 0.0 for sp in config.spectrographs}
    for r in followups:
        site = str(r.get("telescope", "")).split(".")[0]
        if site in spectro:
            spectro[site] += float(r["_hours"] if "_hours" in r else
                                   (float(r["t_end"]) - float(r["t_start"])) / 3600.0)
    return Measured(windows, sites_open, per_night, shutter, spectro)


def moon_text(config, night) -> str:
    """The moon at the middle of the first site's night: illumination, waxing/waning."""
    site = config.sites[0].id
    eph = night.sites[site]
    ivs = night.dark.get(site) or [(night.t_begin, night.t_end)]
    t = 0.5 * (ivs[0][0] + ivs[-1][1])
    illum = (1 + np.cos(np.radians(eph.moon_phase_angle([t, t + 6 * 3600.0])))) / 2
    trend = "waxing" if illum[1] >= illum[0] else "waning"
    return f"{illum[0]:.0%} {trend}"


def depth_text(obs, t0: float, t1: float, bands) -> str:
    if not obs.size:
        return "-"
    sel = obs[(obs["t_start"] >= t0) & (obs["t_start"] < t1)]
    parts = [f"{b} {np.median(sel['limiting_mag'][sel['band'] == b]):.2f}"
             for b in bands if np.any(sel["band"] == b)]
    return " ".join(parts) or "-"


def notable_text(followups, t0: float, t1: float, top: int = 3) -> str:
    """The transients that got spectra in [t0, t1), the best rewarded first."""
    rows = [r for r in followups if t0 <= float(r["t_end"]) < t1 and r.get("label")
            in TRANSIENTS]
    rows.sort(key=lambda r: -float(r.get("reward") or 0))
    text = ", ".join(f"{r['label']} {r['object_id']}" for r in rows[:top])
    return (text + (f" (+{len(rows) - top})" if len(rows) > top else "")) or "-"


def night_coverage_text(config, meas: Measured, t0: float, t1: float) -> str:
    """The night's coverage goal: measured over its windows with every site dark and
    safe, or 'not measured' naming the sites that were not."""
    goal = config.ops.coverage_goal_deg2
    if meas.sites_open is None:
        return "not measured (weather unknown)"
    mine = [(w, ok, fr) for w, ok, fr in zip(meas.windows, meas.valid(), meas.sites_open,
                                              strict=True) if t0 <= w["t0"] < t1]
    if not mine:
        return "not measured (no window with every site dark)"
    good = [w["covered_deg2"] for w, ok, _ in mine if ok]
    shut = Counter(s for _, ok, fr in mine if not ok for s, v in fr.items() if v < FULL)
    note = ("; excluded " + ", ".join(f"{s} {n}" for s, n in shut.items())) if shut else ""
    if not good:
        return f"not measured (0 of {len(mine)} windows clear{note})"
    med = float(np.median(good))
    verdict = "met" if med >= goal else "below"
    return f"{verdict}: {med:,.0f} deg² over {len(good)} of {len(mine)} windows{note}"


def _table(head, rows) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r)
                     + "</tr>" for r in rows)
    return f'<table class="season"><tr>{cells}</tr>\n{body}</table>'


def _f(x, fmt="{:,.0f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def conditions_html(config, nights, meas: Measured, obs, followups, policy: str) -> str:
    """Each night's conditions: per site dark and lost hours, the moon, the depth, the
    coverage goal that night, the notable transients that got spectra, the policy."""
    rows = []
    for night, sites in zip(nights, meas.nights, strict=True):
        t0, t1 = night.t_begin, night.t_end
        rows.append((night.date, "; ".join(sn.text() for sn in sites.values()),
                     moon_text(config, night), depth_text(obs, t0, t1, config.camera.bands),
                     night_coverage_text(config, meas, t0, t1),
                     notable_text(followups, t0, t1), policy))
    return _table(("night", "weather per site (dark, lost to weather)", "moon",
                   "depth (median limiting mag)", "coverage goal",
                   "transients with spectra", "policy"), rows)


def nights_html(metrics: dict) -> str:
    """The per-night numbers of metrics.json's ``nights``."""
    rows = [(n["date"], f"{n['exposures']:,}", _f(n.get("coverage_deg2_per_30min")),
             n["candidates"], n["candidates_new"], _f(n.get("transient_fraction"), "{:.1%}"),
             n["classified"], _f(n.get("macro_f1"), "{:.3f}"),
             _f(n.get("macro_f1_two_nights"), "{:.3f}"), n["spectra"],
             _f(n.get("reward"), "{:g}"), _f(n.get("wall_s"), "{:.1f}"))
            for n in metrics.get("nights") or []]
    return _table(("night", "exposures", "deg²/30 min", "candidates", "new",
                   "transients", "classified", "macro-F1", "F1 (2+ nights)", "spectra",
                   "reward", "wall s"), rows)


def _dates(metrics):
    return [n["date"][5:] for n in metrics["nights"]]


def _bar_axes(plt, n):
    fig, ax = plt.subplots(figsize=(max(10.0, min(14.0, 0.45 * n + 4)), 3.6))
    return fig, ax


def followup_by_night(path: Path, metrics: dict) -> None:
    plt = _plt()
    rows, x = metrics["nights"], np.arange(len(metrics["nights"]))
    fig, ax = _bar_axes(plt, len(rows))
    ax.bar(x, [n["spectra"] for n in rows], color="#2b7bba", label="spectra")
    ax.set_ylabel("spectra")
    ax2 = ax.twinx()
    ax2.plot(x, [n.get("reward") or 0 for n in rows], "o-", color="#d62728",
             label="science reward")
    ax2.plot(x, np.cumsum([n.get("reward") or 0 for n in rows]), ":", color="#d62728",
             label="reward, cumulative")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("science reward")
    _finish(plt, fig, ax, ax2, x, metrics, "Follow-up yield by night", path)


def _finish(plt, fig, ax, ax2, x, metrics: dict, title: str, path: Path) -> None:
    """Dates under the bars, the title, one legend for both axes; saved and closed."""
    ax.set_xticks(x, _dates(metrics), rotation=60 if len(x) > 10 else 0, fontsize=8)
    ax.set_title(title)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def candidates_by_night(path: Path, metrics: dict) -> None:
    plt = _plt()
    rows, x = metrics["nights"], np.arange(len(metrics["nights"]))
    fig, ax = _bar_axes(plt, len(rows))
    ax.bar(x - 0.2, [n["candidates"] for n in rows], 0.4, color="#bbbbbb",
           label="candidates")
    ax.bar(x + 0.2, [n["candidates_new"] for n in rows], 0.4, color="#2b7bba",
           label="new that night")
    ax.set_ylabel("candidates")
    ax2 = ax.twinx()
    for key, style, lab in (("macro_f1", "o-", "macro-F1"),
                            ("macro_f1_two_nights", "s--", "macro-F1, seen 2+ nights")):
        y = [np.nan if n.get(key) is None else n[key] for n in rows]
        ax2.plot(x, y, style, color="#2ca02c", label=lab)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("macro-F1 (simulator's truth)")
    _finish(plt, fig, ax, ax2, x, metrics, "Candidates and classification by night", path)


def depth_map(path: Path, grid, obs, bands) -> None:
    """The season's coverage (three-band visits per field) and depth (median limiting
    magnitude per field, first band) on two Mollweide maps."""
    plt = _plt()
    first = obs[obs["band"] == bands[0]] if obs.size else obs
    fid = first["field_id"] if first.size else np.zeros(0, int)
    counts = np.bincount(fid, minlength=grid.size)
    depth = np.full(grid.size, np.nan)
    if fid.size:
        order = np.argsort(fid, kind="stable")
        f_sorted, lim = fid[order], first["limiting_mag"][order]
        starts = np.flatnonzero(np.r_[True, np.diff(f_sorted) != 0])
        for a, b in zip(starts, np.r_[starts[1:], f_sorted.size], strict=True):
            depth[f_sorted[a]] = np.median(lim[a:b])
    ra = np.radians(((grid.ra_deg + 180) % 360) - 180)
    dec = np.radians(grid.dec_deg)
    seen = counts > 0
    fig = plt.figure(figsize=(12, 13))
    for k, (vals, label, cmap) in enumerate((
            (counts, f"visits per field over the season ({bands[0]} exposures)", "viridis"),
            (depth, f"median {bands[0]} limiting magnitude per field", "magma"))):
        ax = fig.add_subplot(2, 1, k + 1, projection="mollweide")
        ax.scatter(-ra, dec, s=3, c="#dddddd", marker="s", linewidths=0)
        sc = ax.scatter(-ra[seen], dec[seen], s=9, c=vals[seen], cmap=cmap, marker="s",
                        linewidths=0)
        fig.colorbar(sc, ax=ax, orientation="horizontal", pad=0.06, fraction=0.05,
                     label=label)
        ax.set_xticklabels([f"{h}h" for h in (10, 8, 6, 4, 2, 0, 22, 20, 18, 16, 14)])
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.set_title("The season's coverage and depth (RA increases to the left)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def season_html(out_dir: Path, inp, meas: Measured) -> str:
    """The season section of report.html (runs of two nights or more; else "") and its
    figures in ``out_dir``."""
    metrics = inp.metrics
    if len(metrics.get("nights") or []) < 2:
        for name in SEASON_FIGURES:
            (out_dir / name).unlink(missing_ok=True)
        return ""
    followup_by_night(out_dir / "season_followup.png", metrics)
    candidates_by_night(out_dir / "season_candidates.png", metrics)
    depth_map(out_dir / "season_depth.png", inp.grid, inp.obs, inp.config.camera.bands)
    first, last = metrics["nights"][0]["date"], metrics["nights"][-1]["date"]
    return f"""<h2>The season: {len(metrics['nights'])} nights, {first} to {last}</h2>
<h3>Each night</h3>{nights_html(metrics)}
<h3>Follow-up yield by night</h3><img src="season_followup.png" alt="follow-up by night">
<h3>Candidates and macro-F1 by night</h3>
<img src="season_candidates.png" alt="candidates and macro-F1 by night">
<h3>Coverage and depth over the season</h3>
<img src="season_depth.png" alt="season coverage and depth map">
"""
