"""The shipped classifier on real light curves that ship in two PyPI packages (no network).

One JSON line: ``{"bench": "realdata", "slsne": {...}, "mulens": {...}}``. ``slsne`` holds
real Type I superluminous supernovae (expected class SLSN), ``mulens`` real OGLE/KMTNet/
MOA microlensing events from MulensModel (expected class uLens). Per data set: objects,
predicted-class counts, fraction labelled the expected class, fraction labelled any
transient, median probability of the expected class, the same on the first night of
detections, a control on simulated light curves with the same bands, and what was
dropped (see ``policies.realdata``). With a package missing, the line carries an
``error`` naming it instead.
"""

from __future__ import annotations

import json
import time

from policies.realdata import MissingPackageError, classify_real


def main() -> int:
    t0 = time.perf_counter()
    try:
        result = classify_real()
    except MissingPackageError as exc:
        print(json.dumps({"bench": "realdata", "error": str(exc),
                          "missing_packages": list(exc.packages)}))
        return 0
    print(json.dumps({"bench": "realdata", **result,
                      "wall_s": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
