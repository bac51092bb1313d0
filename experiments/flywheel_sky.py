"""Issue 20's flywheel measurement: does a simulated week of spectroscopic labels make
the classifier better on a sky it has not seen, and whose labels help most?

Needs four runs first (about 6 minutes a week on 2 cores)::

    for p in rl greedy uncertainty; do
      brain simulate --nights 7 --seed 9301 --start 2026-12-15 --policy $p --out out/fw/$p --quiet
    done
    brain simulate --nights 3 --seed 5 --start 2027-01-10 --out out/fw/sky --quiet
    python -m experiments.flywheel_sky out/fw --n 2000 --fit-seeds 1 2 3

Each policy's labels are cut to the same count and added to the shipped recipe's
training sets (``brain.evaluation.flywheel.run_flywheel``); every model is trained once
per LightGBM seed and scored by its mean macro-F1. ``--windows 3 --window-d 0.5 2.5``,
``--cap 0.5`` and the like measure other ways of cutting and weighing the labels
(docs/classifier.md, "The flywheel"); other skies: ``--seed 6 --start 2027-02-05`` and
``--seed 7 --start 2027-03-01``, each in a root of its own with the same label runs.
Prints the report as JSON and writes it to ``<root>/flywheel.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from brain.evaluation.flywheel import LABEL_WEIGHT, run_flywheel
from policies.classifier_training import LABEL_SHARE_CAP, LABEL_WINDOW_D, LABEL_WINDOWS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="folder holding the runs rl, greedy, "
                    "uncertainty and sky")
    ap.add_argument("--policies", nargs="+", default=["rl", "greedy", "uncertainty"])
    ap.add_argument("--n", type=int, default=2000, help="simulated light curves a class")
    ap.add_argument("--weights", type=float, nargs="+", default=[LABEL_WEIGHT])
    ap.add_argument("--fit-seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--windows", type=int, default=LABEL_WINDOWS,
                    help="windows each label also trains cut to")
    ap.add_argument("--window-d", type=float, nargs=2, default=list(LABEL_WINDOW_D),
                    metavar=("MIN", "MAX"), help="the windows' lengths (d)")
    ap.add_argument("--cap", type=float, default=LABEL_SHARE_CAP,
                    help="the largest share of a class's weight its labels hold")
    a = ap.parse_args()
    if not 0 < a.cap < 1:
        ap.error(f"--cap must be between 0 and 1, not {a.cap}")
    if a.windows < 0 or not 0 < a.window_d[0] <= a.window_d[1]:
        ap.error("--windows must be 0 or more and --window-d MIN MAX with 0 < MIN <= MAX")
    t0 = time.time()
    report = run_flywheel({p: a.root / p for p in a.policies}, sky=a.root / "sky",
                          n_per_class=a.n, weights=tuple(a.weights), fit_seeds=a.fit_seeds,
                          view_options={"windows": a.windows, "window_d": tuple(a.window_d)},
                          share_cap=a.cap)
    report["wall_s"] = round(time.time() - t0)
    (a.root / "flywheel.json").write_text(json.dumps(report, indent=1) + "\n")
    short = {name: {t: {p: v[p]["macro_f1"] for p in ("full", "first_night") if p in v}
                    for t, v in r.items() if isinstance(v, dict)}
             for name, r in report.items() if name == "none" or "@" in name}
    print(json.dumps({"labels_per_policy": report["labels_per_policy"],
                      "wall_s": report["wall_s"], "macro_f1": short}, indent=1))


if __name__ == "__main__":
    main()
