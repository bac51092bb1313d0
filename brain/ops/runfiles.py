"""The files a run writes (docs/contracts.md): metrics.json, observations.csv,
followups.csv, objects.csv, the environment record and report.html."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from brain.core.followup import followup_rows
from brain.ops.report import ReportInputs, write_report
from observatory.bands import BANDS
from observatory.records import OBS_COLUMNS

FOLLOWUP_COLUMNS = ("target_id", "object_id", "telescope", "t_start", "t_end", "mag",
                    "predicted_class", "p_predicted", "true_class", "label", "before_peak",
                    "reward")
EVALUATION_COLUMNS = ("policy", "seed", "spectra", "hours", "reward", "reward_per_hour",
                      "coverage_deg2_per_30min", "macro_f1")
OBJECT_COLUMNS = ("object_id", "ra_deg", "dec_deg", "n_detections", "predicted_class",
                  "p_predicted", "true_class", "first_mjd", "last_mjd", "n_nights")


def _clean(obj):
    """JSON without NaN: non-finite numbers become null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_observations(path: Path, rows: list[tuple]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(OBS_COLUMNS)
        for r in rows:
            r = tuple(r.tolist()) if isinstance(r, np.void) else r
            # Times at full microsecond precision: an audit recomputes slews from them;
            # pointings to 1e-6 degree (4 mas).
            w.writerow([*r[:6], *(f"{x:.6f}" for x in r[6:10]),
                        *(f"{x:.4f}" for x in r[10:14]), f"{r[14]:.3f}"])


def write_followup_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FOLLOWUP_COLUMNS)
        for r in rows:
            w.writerow([r["target_id"], r["object_id"], r["telescope"], f"{r['t_start']:.1f}",
                        f"{r['t_end']:.1f}", f"{r['mag']:.3f}", r["predicted_class"],
                        f"{r['p_predicted']:.4f}", r["true_class"], r["label"],
                        int(r["before_peak"]), f"{r['reward']:g}"])


def write_objects(path: Path, objects) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(OBJECT_COLUMNS)
        for oid, ra, dec, n, pc, p, tc, *season in objects:
            first, last, nights = season if season else (math.nan, math.nan, "")
            w.writerow([oid, f"{ra:.6f}", f"{dec:.6f}", n, pc,
                        f"{p:.4f}" if math.isfinite(p) else "", tc,
                        f"{first:.6f}" if math.isfinite(first) else "",
                        f"{last:.6f}" if math.isfinite(last) else "", nights])


def write_header_only(path: Path, columns) -> None:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerow(columns)


def write_run(out_dir: Path, result, metrics: dict, windows, obs, objects) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2) + "\n")
    write_observations(out_dir / "observations.csv", result.world.observations)
    write_followups(out_dir, result)
    write_objects(out_dir / "objects.csv", objects)
    result.env.save(out_dir)
    with (out_dir / "windows.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t0", "covered_deg2", "bound_deg2", "visible_deg2", "throughput_deg2"])
        for x in windows:
            w.writerow([f"{x['t0']:.1f}", f"{x['covered_deg2']:.1f}", f"{x['bound_deg2']:.1f}",
                        f"{x['visible_deg2']:.1f}", f"{x['throughput_deg2']:.1f}"])
    write_report(out_dir, ReportInputs(
        config=result.config, grid=result.grid, core=result.core,
        nights=[n.night for n in result.nights], metrics=metrics, windows=windows, obs=obs,
        objects=list(objects), followups=_followup_rows(result),
        weathers=[{s.id: result.env.weather[(k, s.id)] for s in result.config.sites}
                  for k in range(len(result.nights))]))


def _followup_rows(result) -> list[dict]:
    manager = result.core.followup
    if manager is None or result.world.spec is None:
        return []
    return followup_rows(manager, result.world.spec.log)


def write_followups(out_dir: Path, result) -> None:
    """followups.csv; with follow-up on, also the labelled objects' light curves
    (``labelled.csv``: the data flywheel's training data) and ``stream.npz`` (what
    ``brain evaluate``-style re-runs of the follow-up alone need)."""
    manager = result.core.followup
    if manager is None or result.world.spec is None:
        write_header_only(out_dir / "followups.csv", FOLLOWUP_COLUMNS)
        return
    write_followup_rows(out_dir / "followups.csv", _followup_rows(result))
    write_labelled(out_dir / "labelled.csv", result.core.associator, manager.labels)
    path = out_dir / "stream.npz"
    if result.stream_path is not None and Path(result.stream_path) == path:
        if manager.stream.ticks:
            manager.stream.spill(path)  # written night by night: the rest, if any
    else:
        manager.stream.save(path)


LABELLED_COLUMNS = ("object_id", "mjd", "band", "mag", "mag_err", "label")


def write_labelled(path: Path, associator, labels: dict[int, str]) -> None:
    """Light curves of the objects a spectrum labelled, with the spectrum's label."""

    ids = np.array(sorted(labels), dtype=np.int64)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(LABELLED_COLUMNS)
        if ids.size == 0:
            return
        obj, mjd, band, mag, err = associator.history_by_id(ids)
        names = BANDS
        for o, t, b, m, e in zip(obj, mjd, band, mag, err, strict=True):
            w.writerow([f"o{o:07d}", f"{t:.6f}", names[b], f"{m:.4f}", f"{e:.4f}",
                        labels[int(o)]])
