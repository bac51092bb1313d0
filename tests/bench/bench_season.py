"""A season in the fast shell: wall time of each night, peak memory, output bytes a
night, new candidates and classification quality night by night (brain bench season).

Runs ``brain simulate --nights N`` (default 30) on the default array with climate
weather, then, in the same run, a baseline of the same code with the brain's season
behaviour turned off through its config (every object stays new, every detection and
artefact stays in memory): what the brain did before it had a store and a known sky.
The baseline runs fewer nights (default 4); its per-night growth is the comparison.

Prints one JSON object. Options: --nights N, --baseline-nights N (0: none),
--seed S, --start DATE, --keep DIR (keep the runs there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "brain" / "configs" / "sitian-54.yaml"
# Targets of the season (docs/season.md): the last night at most 1.2x the second's wall,
# peak RSS at most 3 GB, at most 30 MB of outputs a night.
TARGETS = {"last_over_second_wall": 1.2, "peak_rss_mb": 3072, "output_mb_per_night": 30}


def _run(out: Path, nights: int, seed: int, start: str, config: Path) -> dict:
    cmd = [sys.executable, "-m", "brain", "simulate", "--out", str(out), "--nights",
           str(nights), "--seed", str(seed), "--start", start, "--config", str(config),
           "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    log = proc.stdout.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"brain simulate failed:\n{log[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    per_night = [{k: n.get(k) for k in ("date", "wall_s", "exposures", "candidates",
                                        "candidates_new", "transient_fraction", "classified",
                                        "macro_f1", "macro_f1_two_nights", "spectra",
                                        "reward", "objects", "detections_in_memory")}
                 for n in m["nights"]]
    walls = [n["wall_s"] for n in per_night]
    late = [n["macro_f1_two_nights"] for n in per_night[7:]
            if n["macro_f1_two_nights"] is not None]
    fu = m["followup"]
    return {"nights": nights, "wall_s": round(wall, 1), "sim_wall_s": m["sim"]["wall_seconds"],
            "speedup": round(m["sim"]["speedup"], 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "output_mb": round(size / 2**20, 1),
            "output_mb_per_night": round(size / 2**20 / nights, 2),
            "files_mb": {p.name: round(p.stat().st_size / 2**20, 2)
                         for p in sorted(out.iterdir()) if p.is_file()},
            "last_over_second_wall": (round(walls[-1] / walls[1], 3) if len(walls) > 1
                                      else None),
            "macro_f1_two_nights_from_week_2": (round(sorted(late)[len(late) // 2], 3)
                                                if late else None),
            "spectra": fu["spectra"], "reward": fu["reward"],
            "reward_per_hour": fu["reward_per_hour"],
            "per_night": per_night}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--baseline-nights", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--start", default="2026-12-15")
    ap.add_argument("--keep", help="keep the runs in this directory")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-season-"))
    root.mkdir(parents=True, exist_ok=True)
    season_cfg = root / "season.yaml"
    base = yaml.safe_load(CONFIG.read_text())
    season_cfg.write_text(yaml.safe_dump(base))
    # The baseline: the same code with the season behaviour off.
    old = dict(base)
    old["name"] = "sitian-54-no-season"
    old["transients"] = dict(base.get("transients") or {}, new_days=365.0)
    old["store"] = dict(base.get("store") or {}, memory_nights=30, orphan_days=60.0)
    base_cfg = root / "baseline.yaml"
    base_cfg.write_text(yaml.safe_dump(old))
    out = {"bench": "season", "seed": args.seed, "start": args.start, "targets": TARGETS}
    if args.baseline_nights:
        out["baseline"] = _run(root / "baseline", args.baseline_nights, args.seed,
                               args.start, base_cfg)
    out["season"] = _run(root / "season", args.nights, args.seed, args.start, season_cfg)
    s = out["season"]
    out["met"] = {"last_over_second_wall": (s["last_over_second_wall"] is not None and
                                            s["last_over_second_wall"]
                                            <= TARGETS["last_over_second_wall"]),
                  "peak_rss_mb": s["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
                  "output_mb_per_night": (s["output_mb_per_night"]
                                          <= TARGETS["output_mb_per_night"])}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
