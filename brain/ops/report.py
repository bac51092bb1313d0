"""report.html and its PNG figures: sky coverage (Mollweide), coverage per window,
open-shutter timeline per group, follow-up timeline, a page of light curves with their
class probabilities, the numbers against the goals (each measured only where it can be:
brain.ops.season_report) and each night's conditions; for runs of two nights or more,
the season section (brain.ops.season_report).

Both shells write it: the fast shell from its result (``brain simulate``/``replay``),
the daemon shell from its journal and core at the end of each night
(:mod:`brain.ops.nightjobs`). :class:`ReportInputs` is what either gives."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from brain.ops.season_report import (
    SEASON_FIGURES,
    Measured,
    conditions_html,
    measure,
    season_html,
)
from observatory.bands import BANDS
from observatory.taxonomy import TRANSIENTS

FIGURES = ("sky_coverage.png", "coverage_windows.png", "open_shutter.png",
           "followups.png", "light_curves.png")


@dataclass
class ReportInputs:
    """What a report is made of. ``nights``: the nights' ephemerides
    (``observatory.ephemeris.NightEphemeris``); ``core``: the brain core whose associator
    and class probabilities give the light curves; ``obs``: the observation array
    (brain.ops.survey_metrics.observations_array); ``windows``:
    brain.ops.survey_metrics.coverage_windows;
    ``objects``: objects.csv rows; ``followups``: followups.csv rows (dicts);
    ``metrics``: metrics.json's keys (what a shell cannot know is None); ``weathers``:
    per night, site -> weather series (``at(t)``), what the goals are measured against
    (None: not known, no goal is checked against the weather)."""

    config: object
    grid: object
    core: object
    nights: list
    metrics: dict
    windows: list
    obs: np.ndarray
    objects: list = field(default_factory=list)
    followups: list = field(default_factory=list)
    title: str = ""
    weathers: list | None = None


def _plt():
    import matplotlib  # lazy: heavy optional library

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy optional library

    return plt


def _sky_map(path: Path, grid, obs) -> None:
    plt = _plt()
    g = obs[obs["band"] == "g"] if obs.size else obs
    counts = np.bincount(g["field_id"], minlength=grid.size) if g.size else np.zeros(grid.size)
    ra = np.radians(((grid.ra_deg + 180) % 360) - 180)
    dec = np.radians(grid.dec_deg)
    fig = plt.figure(figsize=(10, 5.6))
    ax = fig.add_subplot(111, projection="mollweide")
    ax.scatter(-ra, dec, s=3, c="#dddddd", marker="s", linewidths=0)
    seen = counts > 0
    sc = ax.scatter(-ra[seen], dec[seen], s=9, c=counts[seen], cmap="viridis", marker="s",
                    linewidths=0)
    fig.colorbar(sc, ax=ax, orientation="horizontal", pad=0.06, fraction=0.05,
                 label="three-band visits per field")
    ax.set_xticklabels([f"{h}h" for h in (10, 8, 6, 4, 2, 0, 22, 20, 18, 16, 14)])
    ax.grid(True, alpha=0.3)
    ax.set_title("Sky coverage (RA increases to the left)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _coverage_plot(path: Path, windows, t_ref: float, goal_deg2: float) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if windows:
        t = [(w["t0"] - t_ref) / 3600 for w in windows]
        ax.step(t, [w["covered_deg2"] for w in windows], where="post", label="covered")
        ax.step(t, [w["bound_deg2"] for w in windows], where="post", ls="--", label="bound")
        ax.step(t, [w["visible_deg2"] for w in windows], where="post", ls=":",
                label="visible")
    else:
        ax.text(0.5, 0.5, "no 30-minute window with every site dark", ha="center",
                transform=ax.transAxes, color="#777")
    ax.axhline(goal_deg2, color="grey", lw=0.8, label=f"{goal_deg2:,.0f} deg² goal")
    ax.set_xlabel("hours since the first dusk")
    ax.set_ylabel("deg² per 30 min (3 bands)")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _timeline(path: Path, config, obs, t_ref: float, nights) -> None:
    plt = _plt()
    groups = [g.name for g in config.groups]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(groups) + 1.2))
    first = obs[obs["band"] == config.camera.bands[0]] if obs.size else obs
    for row, name in enumerate(groups):
        site, num = name.split(".g")
        sel = first[(first["site"] == site) & (first["group"] == int(num))]
        bars = [((s - t_ref) / 3600, (e - s) / 3600) for s, e in
                zip(sel["t_start"], sel["t_end"], strict=True)]
        ax.broken_barh(bars, (row - 0.4, 0.8), color="#2b7bba", linewidth=0)
    for night in nights:
        for k, ivs in enumerate(night.dark.values()):
            for a, b in ivs:
                ax.axvspan((a - t_ref) / 3600, (b - t_ref) / 3600, color=f"C{k + 1}",
                           alpha=0.06)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("hours since the first dusk (shaded: each site's astronomical night)")
    ax.set_title("Open shutter per group")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _light_curves(path: Path, core, objects, labels: dict[str, str],
                 per_page: int = 12) -> list:
    """A page of candidates (spectroscopically labelled first, then predicted
    transients, then those seen on the most nights, the most detected) with their g, r,
    i points over their whole history (weeks, in a season: the time axis is in days when
    a light curve spans more than two) and the classifier's three most likely classes.
    Returns the rows shown ([] and no figure without candidates)."""

    if not objects:
        return []
    plt = _plt()
    classes = core.classifier.classes
    rows = sorted(objects, key=lambda r: (labels.get(r[0]) not in TRANSIENTS,
                                          r[4] not in TRANSIENTS, r[0] not in labels,
                                          -_n_nights(r), -r[3]))[:per_page]
    ids = np.array([int(r[0][1:]) for r in rows])
    obj, mjd, band, mag, err = core.associator.history_by_id(ids)
    cols = 4
    n_rows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(12, 2.6 * n_rows), squeeze=False)
    for ax, oid, row in zip(axes.ravel(), ids, rows, strict=False):
        sel = obj == oid
        t0 = mjd[sel].min() if sel.any() else 0.0
        days = sel.any() and mjd[sel].max() - t0 > 2.0  # weeks of a season: in days
        scale, unit = (1.0, "days") if days else (24.0, "hours")
        for b, colour in enumerate(("#2ca02c", "#d62728", "#4b0082")):
            m = sel & (band == b)
            ax.errorbar((mjd[m] - t0) * scale, mag[m], err[m], fmt=".", ms=3, color=colour,
                        lw=0.6, label=BANDS[b])
        ax.invert_yaxis()
        p = core.associator.prob_by_id(int(oid))
        probs = ("not classified yet" if p is None or not p.any() else
                 ", ".join(f"{classes[k]} {p[k]:.2f}" for k in np.argsort(p)[::-1][:3]))
        known = [f"spectrum {labels[row[0]]}"] if row[0] in labels else []
        if len(row) > 6 and row[6]:
            known.append(f"true {row[6]}")
        if _n_nights(row) > 1:
            known.append(f"{_n_nights(row)} nights")
        ax.set_title(f"{row[0]} {' '.join(known)}\n{probs}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlabel(f"{unit} since first detection", fontsize=6)
    axes.ravel()[0].legend(fontsize=6, loc="best")
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return rows


def _n_nights(row) -> int:
    """An objects row's nights seen (0 where the row does not say)."""
    try:
        return int(row[9]) if len(row) > 9 else 0
    except (TypeError, ValueError):
        return 0


def _shown_text(rows, labels: dict[str, str]) -> str:
    """The light curves on the page, in words: id, spectrum, nights seen and span."""
    parts = []
    for r in rows:
        bits = [f"spectrum {labels[r[0]]}"] if r[0] in labels else []
        if _n_nights(r):
            span = float(r[8]) - float(r[7])
            bits.append(f"{_n_nights(r)} night{'s' * (_n_nights(r) > 1)} over {span:.1f} d")
        parts.append(r[0] + (f" ({', '.join(bits)})" if bits else ""))
    return "Shown: " + "; ".join(parts) + "."


def _followup_timeline(path: Path, config, rows: list[dict], t_ref: float, nights) -> None:
    """One lane per spectroscopic telescope: each spectrum a bar from acquisition to the
    end of the exposure, coloured by its science reward, annotated with the label."""
    plt = _plt()
    tels = [f"{sp.site}.spec" for sp in config.spectrographs] or ["(none)"]
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(tels) + 1.6))
    cmap = plt.get_cmap("plasma")
    top = max([float(r.get("reward") or 0) for r in rows] + [1.0])
    for r in rows:
        if r["telescope"] not in tels:
            continue
        y = tels.index(r["telescope"])
        a, b = (float(r["t_start"]) - t_ref) / 3600, (float(r["t_end"]) - t_ref) / 3600
        reward = float(r.get("reward") or 0)
        ax.broken_barh([(a, b - a)], (y - 0.35, 0.7), color=cmap(0.15 + 0.8 * reward / top),
                       edgecolor="#333", linewidth=0.4)
        if reward > 0:  # the spectra that paid: named (most are too short to label)
            ax.annotate(r.get("label") or "?", (0.5 * (a + b), y - 0.38), ha="center",
                        va="bottom", fontsize=6, rotation=90)
    for night in nights:
        for k, sp in enumerate(config.spectrographs):
            for lo, hi in night.dark.get(sp.site, []):
                ax.axvspan((lo - t_ref) / 3600, (hi - t_ref) / 3600, ymin=0, ymax=1,
                           color=f"C{k + 1}", alpha=0.05)
    if not rows:
        ax.text(0.5, 0.5, "no spectra taken", ha="center", transform=ax.transAxes,
                color="#777")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, top))
    fig.colorbar(sm, ax=ax, pad=0.01, label="science reward")
    ax.set_yticks(range(len(tels)), tels, fontsize=8)
    ax.set_ylim(len(tels) - 0.5, -0.5)
    ax.set_xlabel("hours since the first dusk (shaded: each site's astronomical night)")
    ax.set_title("Spectroscopic follow-up (spectra that earned a reward are named)")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _verdict(x, target, higher=True) -> str:
    if x is None:
        return "not measured"
    return "met" if (x >= target if higher else x <= target) else "below"


def _lost_text(meas: Measured, site: str) -> str:
    lost: dict[str, float] = {}
    for n in meas.nights:
        for k, v in (n[site].reasons if site in n else {}).items():
            lost[k] = lost.get(k, 0.0) + v
    return ", ".join(f"{k} {v:.1f} h" for k, v in sorted(lost.items(), key=lambda kv: -kv[1]))


def _coverage_goal(config, metrics: dict, meas: Measured | None) -> list[tuple]:
    """The 30-minute coverage goal, measured only over the windows in which every site
    was dark and safe throughout; the excluded windows are counted per site."""
    goal = config.ops.coverage_goal_deg2
    what = "3-band area per 30 min (median, windows with every site dark and safe)"
    if meas is None or meas.sites_open is None:
        cov = metrics["survey"]["coverage_deg2_per_30min"]["median"]
        return [(what, _num(cov, "{:,.0f} deg²"), f"{goal:,.0f} deg²",
                 "not measured (the sites' weather is not known)")]
    if not meas.windows:
        return [(what, "n/a", f"{goal:,.0f} deg²",
                 "not measured (no 30-minute window with every site dark)")]
    n = len(meas.windows)
    good = [w["covered_deg2"] for w, ok in zip(meas.windows, meas.valid(), strict=True) if ok]
    med = float(np.median(good)) if good else None
    rows = [(what, _num(med, "{:,.0f} deg²"), f"{goal:,.0f} deg²",
             _verdict(med, goal) + ("" if good else
                                    " (no window with every site dark and safe)"))]
    shut = meas.excluded_by_site()
    if shut:
        rows.append(("  … windows left out: a site closed or unsafe in them",
                     f"{n - len(good)} of {n}", "-",
                     "; ".join(f"{s}: {k} windows (lost over the run: "
                               f"{_lost_text(meas, s) or 'under a minute'})"
                               for s, k in shut.items())))
    return rows


def goal_rows(config, metrics: dict, meas: Measured | None = None
              ) -> list[tuple[str, str, str, str]]:
    """The run's numbers against the goals: (what, value, goal, verdict). A goal reads
    "met" or "below" only where it was measured against it: the coverage goal over the
    windows with every site dark and safe, the open-shutter and spectroscopic goals per
    site over its dark and safe hours; elsewhere "not measured", saying why. ``meas``
    (:func:`brain.ops.season_report.measure`): without it nothing is checked against
    the weather."""
    s, f = metrics["survey"], metrics["followup"]
    rows = _coverage_goal(config, metrics, meas)
    frac = s.get("coverage_fraction_of_bound")
    rows.append(("  … of what sky and weather allowed (bound)", _num(frac, "{:.1%}"),
                 f"{config.ops.coverage_of_bound_goal:.0%}",
                 _verdict(frac, config.ops.coverage_of_bound_goal)))
    osf_goal, use_goal = config.ops.open_shutter_goal, config.ops.spectro_use_goal
    bands = len(config.camera.bands)
    osf = s.get("open_shutter_fraction")
    open_h = f.get("open_hours")
    used = f["hours"] / open_h if open_h else None
    if meas is not None and meas.sites_open is not None:
        open_cam = sum(meas.site_total(x.id, "open_h") * x.groups * bands
                       for x in config.sites)
        osf = sum(meas.shutter_h.values()) / open_cam if open_cam > 0 else None
        open_sp = sum(meas.site_total(sp.site, "open_h") for sp in config.spectrographs)
        used = f["hours"] / open_sp if open_sp > 0 else None
    rows.append(("Open-shutter fraction (of dark and safe hours)", _num(osf, "{:.1%}"),
                 f"{osf_goal:.0%}", _verdict(osf, osf_goal)))
    if meas is not None and meas.sites_open is not None and len(config.sites) > 1:
        for x in config.sites:
            oh = meas.site_total(x.id, "open_h")
            v = meas.shutter_h[x.id] / (oh * x.groups * bands) if oh > 0 else None
            why = "" if oh > 0 else f" (no dark and safe hour: {_lost_text(meas, x.id)})"
            rows.append((f"  {x.id}: {oh:.1f} dark and safe h", _num(v, "{:.1%}"),
                         f"{osf_goal:.0%}", _verdict(v, osf_goal) + why))
    rows.append(("Spectroscopic time used of dark and safe time", _num(used, "{:.1%}"),
                 f"{use_goal:.0%}", _verdict(used, use_goal)))
    if meas is not None and meas.sites_open is not None and len(config.spectrographs) > 1:
        for sp in config.spectrographs:
            oh = meas.site_total(sp.site, "open_h")
            v = meas.spectro_h.get(sp.site, 0.0) / oh if oh > 0 else None
            why = "" if oh > 0 else f" (no dark and safe hour: {_lost_text(meas, sp.site)})"
            rows.append((f"  {sp.site}.spec: {oh:.1f} dark and safe h", _num(v, "{:.1%}"),
                         f"{use_goal:.0%}", _verdict(v, use_goal) + why))
    rows.append(("Science reward per spectroscopic hour", _num(f.get("reward_per_hour"),
                                                                "{:.2f}"), "-", "-"))
    return rows


def _num(x, fmt="{:,.0f}"):
    return "n/a" if x is None else fmt.format(x)


def followup_sentence(f: dict) -> str:
    """The follow-up numbers in words (plain text), saying what each one measures.
    ``confirmed``: per class, spectra whose label is the class the brain predicted;
    ``labels_matching_truth``: only where the truth is known (simulations)."""
    labelled = f.get("labelled", 0)
    confirmed = f.get("confirmed") or {}
    per_class = ", ".join(f"{k} {v}" for k, v in confirmed.items())
    text = (f"Spectra: {f['spectra']} ({_num(f['hours'], '{:.1f}')} h); labelled "
            f"{labelled}; confirmed as predicted (label = the class the brain predicted): "
            f"{sum(confirmed.values())} of {labelled}" + (f" ({per_class})" if per_class
                                                          else "") + ".")
    if f.get("labels_matching_truth") is not None:
        text += (f" Labels matching the simulator's truth: {f['labels_matching_truth']} "
                 f"of {labelled} (this measures the simulated spectrograph's "
                 "identification, not the classifier).")
    return text


def write_report(out_dir: Path, inp: ReportInputs) -> list[Path]:
    """report.html and its figures in ``out_dir``; returns the PNG paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    nights, metrics, config = inp.nights, inp.metrics, inp.config
    t_ref = nights[0].t_begin if nights else 0.0
    _sky_map(out_dir / "sky_coverage.png", inp.grid, inp.obs)
    _coverage_plot(out_dir / "coverage_windows.png", inp.windows, t_ref,
                   config.ops.coverage_goal_deg2)
    _timeline(out_dir / "open_shutter.png", config, inp.obs, t_ref, nights)
    _followup_timeline(out_dir / "followups.png", config, inp.followups, t_ref, nights)
    meas = measure(config, nights, inp.weathers, inp.windows, inp.obs, inp.followups)
    season = season_html(out_dir, inp, meas)
    labels = {r["object_id"]: r["label"] for r in inp.followups if r.get("label")}
    shown = _light_curves(out_dir / "light_curves.png", inp.core, list(inp.objects), labels)
    has_lc = bool(shown)
    if not has_lc:
        (out_dir / "light_curves.png").unlink(missing_ok=True)
    s, f = metrics["survey"], metrics["followup"]
    cov, bound = s["coverage_deg2_per_30min"], s["coverage_bound_deg2_per_30min"]
    dec = metrics["scheduler"]["decision_ms"]
    start = datetime.fromtimestamp(t_ref, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [("Nights", metrics.get("n_nights", len(metrics.get("nights") or []))),
            ("First dusk", start)]
    rows += [(k, metrics[key]) for k, key in (("Seed", "seed"), ("Weather", "weather"),
                                             ("Journal", "journal")) if key in metrics]
    rows += [("Median 3-band area per 30 min", f"{_num(cov['median'])} deg²"),
             ("Bound (median)", f"{_num(bound['median'])} deg²"),
             ("Windows with every site dark", cov["windows"]),
             ("Median revisit", f"{_num(s['median_revisit_min'], '{:.1f}')} min"),
             ("Exposures / 3-band visits", f"{s['exposures']:,} / {s['visits']:,}"),
             ("Median slew", f"{_num(s.get('median_slew_s'), '{:.2f}')} s"),
             ("Scheduler decision p50 / p99",
              f"{_num(dec['p50'], '{:.2f}')} / {_num(dec['p99'], '{:.2f}')} ms"),
             ("Spectra / hours / reward",
              f"{f['spectra']} / {_num(f['hours'], '{:.1f}')} h / {_num(f['reward'], '{:g}')}")]
    if metrics.get("sim"):
        rows.append(("Simulated speed", f"{metrics['sim']['speedup']:,.0f}× real time"))

    def table(rs):
        return "\n".join("<tr>" + "".join(
            f"<{'th' if k == 0 else 'td'}>{html.escape(str(v))}</{'th' if k == 0 else 'td'}>"
            for k, v in enumerate(r)) + "</tr>" for r in rs)

    goals = goal_rows(config, metrics, meas)
    n_nights = len(nights)
    kind = "season" if n_nights > 1 else "night"
    measured = ("" if inp.weathers is None else
                "The coverage goal is measured over the 30-minute windows in which every "
                "site was dark and safe throughout (windows with a site closed or unsafe "
                "are counted and left out); the open-shutter and spectroscopic goals over "
                "each site's dark and safe hours. \u201cnot measured\u201d: no valid "
                "measurement exists.")
    conditions = conditions_html(config, nights, meas, inp.obs, inp.followups,
                                 str(metrics.get("policy") or "-"))
    tr = metrics["transients"]
    macro = metrics["classifier"].get("macro_f1")
    truth = ("" if macro is None else
             f"; classifier macro-F1 against the simulator's truth: {macro:.3f}")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SiTian {kind} report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
th{{text-align:left;padding-right:2em;font-weight:normal;color:#555}}
td{{padding-right:2em}} .met{{color:#1a7f37}} img{{max-width:100%}}
.note{{color:#777}} table.season{{border-collapse:collapse;font-size:85%}}
table.season td,table.season th{{border-bottom:1px solid #ddd;padding:2px 8px 2px 0;
vertical-align:top}}</style></head><body>
<h1>SiTian {kind} report: {html.escape(inp.title or str(metrics['config']))}</h1>
<h2>Against the goals</h2>
<table><tr><th>what</th><th>{'this run' if n_nights > 1 else 'tonight'}</th><th>goal</th>
<th></th></tr>{table(goals)}</table>
<p class="note">{html.escape(measured)}</p>
<h2>The {kind} in numbers</h2>
<table>{table(rows)}</table>
<h2>Each night's conditions</h2>{conditions}
{season}
<h2>Sky coverage</h2><img src="sky_coverage.png" alt="sky coverage map">
<h2>Coverage per 30-minute window</h2><img src="coverage_windows.png" alt="coverage">
<h2>Open shutter per group</h2><img src="open_shutter.png" alt="open-shutter timeline">
<h2>Follow-up</h2><p>{html.escape(followup_sentence(f))}</p>
<img src="followups.png" alt="follow-up timeline">
<h2>Light curves</h2><p>Candidates: {tr['candidates']:,}{html.escape(truth)}.</p>
{f'<p class="note">{html.escape(_shown_text(shown, labels))}</p>' if has_lc else ''}
{'<img src="light_curves.png" alt="light curves">' if has_lc else
 '<p class="note">No candidates yet.</p>'}
<h2>Metrics</h2><pre>{html.escape(json.dumps(metrics, indent=1, default=str))}</pre>
</body></html>
"""
    (out_dir / "report.html").write_text(page)
    return [out_dir / name for name in (*FIGURES, *SEASON_FIGURES)
            if (out_dir / name).exists()]
