"""Leave-one-generator-out: the classifier's score on a generator it was not trained on
(policies/generalisation.py), beside the within-generator score (trained and tested on
our own generator, held-out seeds) as the in-run baseline.

One JSON line. ``--n-per-class`` sets the training size per class and generator
(default 2000; the shipped model uses 8000); about 15 minutes at the default on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

from policies.generalisation import leave_one_generator_out, within_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-per-class", type=int, default=2000)
    ap.add_argument("--test-per-class", type=int, default=400)
    args = ap.parse_args()
    t0 = time.perf_counter()
    base = within_generator(args.n_per_class, test_per_class=args.test_per_class)
    logo = leave_one_generator_out(args.n_per_class, test_per_class=args.test_per_class)
    print(json.dumps({"bench": "generalisation", "within_generator_ours": base,
                      "leave_one_generator_out": logo,
                      "targets": {"full_macro_f1": 0.80, "first_night_macro_f1": 0.55,
                                  "snia_recall": 0.6, "min_class_recall_full": 0.4},
                      "wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
