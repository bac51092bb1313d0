"""Flywheel comparison (issue 4): a classifier retrained on RL-chosen labels against one
retrained on greedy-chosen labels, at the same number of spectra per night (the first k
of each night, k the smaller of the two policies' counts).

Needs the runs first (about 70 s each)::

    for s in 9101 9102 9103 9104 9105 9106; do for p in rl greedy; do
      brain simulate --seed $s --policy $p --out out/flywheel/$p-$s --quiet; done; done
    python -m experiments.flywheel 1500

Prints one JSON line per classifier and writes ``out/flywheel/flywheel-N.json``.
"""

import csv
import json
import sys
import time
from pathlib import Path

from policies.classifier_training import train
from policies.lightcurve_io import read_labelled


def main() -> None:
    N = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    root = Path("out/flywheel")
    seeds = range(9101, 9107)
    eq = root / "equal"
    counts = {}
    for s in seeds:
        firsts = {}
        for p in ("rl", "greedy"):
            rows = [r for r in csv.DictReader(open(root / f"{p}-{s}/followups.csv")) if r["label"]]
            rows.sort(key=lambda r: float(r["t_start"]))
            firsts[p] = [r["object_id"] for r in rows]
        k = min(len(v) for v in firsts.values())
        counts[s] = k
        for p in ("rl", "greedy"):
            keep = set(firsts[p][:k])
            src = root / f"{p}-{s}/labelled.csv"
            dst = eq / p / f"{s}.csv"
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src) as fi, open(dst, "w", newline="") as fo:
                r = csv.DictReader(fi)
                w = csv.DictWriter(fo, r.fieldnames)
                w.writeheader()
                got = set()
                for row in r:
                    if row["object_id"] in keep:
                        w.writerow(row)
                        got.add(row["object_id"])
            assert got == keep, (p, s, len(got), len(keep))
    print(json.dumps({"labels_per_seed": counts, "total": sum(counts.values())}), flush=True)
    out = {}
    for name in ("none", "rl", "greedy"):
        lab = None if name == "none" else read_labelled(sorted((eq / name).glob("*.csv")))
        t0 = time.time()
        _m, rep = train(n_per_class=N, seed=1, out_dir=None, labelled=lab)
        t = rep["test"]
        out[name] = {"n_labelled": rep["n_labelled"], "macro_f1": t["full"]["macro_f1"],
                     "macro_f1_first_night": t["first_night"]["macro_f1"],
                     "tvv_first_night": t["first_night"]["transient_vs_variable_accuracy"],
                     "random_macro_f1": rep["test_random"]["full"]["macro_f1"],
                     "train_s": round(time.time() - t0)}
        print(json.dumps({name: out[name]}), flush=True)
    json.dump({"n_per_class": N, "labels_per_seed": counts, "results": out},
              open(root / f"flywheel-{N}.json", "w"), indent=1)


if __name__ == "__main__":
    main()
