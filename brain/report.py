"""report.html and its PNG figures: sky coverage (Mollweide), coverage per window,
open-shutter timeline per group, and the follow-up and light-curve pages."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _coverage_plot(path: Path, windows, t_ref: float) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    if windows:
        t = [(w["t0"] - t_ref) / 3600 for w in windows]
        ax.step(t, [w["covered_deg2"] for w in windows], where="post", label="covered")
        ax.step(t, [w["bound_deg2"] for w in windows], where="post", ls="--", label="bound")
        ax.step(t, [w["visible_deg2"] for w in windows], where="post", ls=":",
                label="visible")
    ax.axhline(10000, color="grey", lw=0.8, label="10,000 deg² goal")
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


def _light_curves(path: Path, result, objects, per_page: int = 12) -> bool:
    """A page of candidates (transients first, then the most detected) with their
    g, r, i points and the classifier's three most likely classes."""
    if not objects:
        return False
    plt = _plt()
    core = result.core
    classes = core.classifier.classes
    rows = sorted(objects, key=lambda r: (r[6] in ("bogus",) or r[6] in
                                          ("RRL", "EB", "DSCT", "LPV", "AGN"), -r[3]))
    rows = rows[:per_page]
    ids = np.array([int(r[0][1:]) for r in rows])
    obj, mjd, band, mag, err = core.associator.light_curves(ids)
    cols = 4
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(12, 2.6 * (
        (len(rows) + cols - 1) // cols)), squeeze=False)
    for ax, oid, row in zip(axes.ravel(), ids, rows, strict=False):
        sel = obj == oid
        t0 = mjd[sel].min()
        for b, colour in enumerate(("#2ca02c", "#d62728", "#8c564b")):
            m = sel & (band == b)
            ax.errorbar((mjd[m] - t0) * 24, mag[m], err[m], fmt=".", ms=3, color=colour,
                        lw=0.6, label="gri"[b])
        ax.invert_yaxis()
        top = np.argsort(core.obj_prob[oid])[::-1][:3]
        probs = ", ".join(f"{classes[k]} {core.obj_prob[oid][k]:.2f}" for k in top)
        ax.set_title(f"{row[0]} true {row[6]}\n{probs}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("hours since first detection", fontsize=6)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return True


def write_report(out_dir: Path, result, metrics: dict, windows, obs, objects=()) -> None:
    nights = [n.night for n in result.nights]
    t_ref = nights[0].t_begin if nights else 0.0
    _sky_map(out_dir / "sky_coverage.png", result.grid, obs)
    _coverage_plot(out_dir / "coverage_windows.png", windows, t_ref)
    _timeline(out_dir / "open_shutter.png", result.config, obs, t_ref, nights)
    has_lc = _light_curves(out_dir / "light_curves.png", result, list(objects))
    s = metrics["survey"]
    cov, bound = s["coverage_deg2_per_30min"], s["coverage_bound_deg2_per_30min"]

    def num(x, fmt="{:,.0f}"):
        return "n/a" if x is None else fmt.format(x)

    start = datetime.fromtimestamp(t_ref, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [("Nights", metrics["nights"]), ("First dusk", start), ("Seed", metrics["seed"]),
            ("Weather", metrics["weather"]),
            ("Median 3-band area per 30 min", f"{num(cov['median'])} deg²"),
            ("Bound (median)", f"{num(bound['median'])} deg²"),
            ("Fraction of bound", num(s["coverage_fraction_of_bound"], "{:.1%}")),
            ("Windows with every site dark", cov["windows"]),
            ("Median revisit", f"{num(s['median_revisit_min'], '{:.1f}')} min"),
            ("Exposures / 3-band visits", f"{s['exposures']:,} / {s['visits']:,}"),
            ("Open-shutter fraction", num(s["open_shutter_fraction"], "{:.1%}")),
            ("Median slew", f"{num(s['median_slew_s'], '{:.2f}')} s"),
            ("Scheduler decision p50 / p99",
             f"{num(metrics['scheduler']['decision_ms']['p50'], '{:.2f}')} / "
             f"{num(metrics['scheduler']['decision_ms']['p99'], '{:.2f}')} ms"),
            ("Simulated speed", f"{metrics['sim']['speedup']:,.0f}× real time")]
    table = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                      for k, v in rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SiTian night report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
th{{text-align:left;padding-right:2em;font-weight:normal;color:#555}}
img{{max-width:100%}} .note{{color:#777}}</style></head><body>
<h1>SiTian night report: {html.escape(metrics['config'])}</h1>
<table>{table}</table>
<h2>Sky coverage</h2><img src="sky_coverage.png" alt="sky coverage map">
<h2>Coverage per 30-minute window</h2><img src="coverage_windows.png" alt="coverage">
<h2>Open shutter per group</h2><img src="open_shutter.png" alt="open-shutter timeline">
<h2>Follow-up</h2><p class="note">Spectra taken: {metrics['followup']['spectra']}.
Spectroscopic follow-up is not part of this build yet; followups.csv has its header.</p>
<h2>Light curves</h2><p>Candidates: {metrics['transients']['candidates']:,}
(transients {metrics['transients'].get('candidates_transient', 0):,}, artefacts
{metrics['transients'].get('candidates_bogus', 0):,}); classifier macro-F1 against the
simulator's truth: {num(metrics['classifier']['macro_f1'], '{:.3f}')}.</p>
{'<img src="light_curves.png" alt="light curves">' if has_lc else ''}
<h2>Metrics</h2><pre>{html.escape(json.dumps(metrics, indent=1))}</pre>
</body></html>
"""
    (out_dir / "report.html").write_text(page)
