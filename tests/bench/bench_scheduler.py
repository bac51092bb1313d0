"""Scheduler decision latency against astroplan's vectorised constraints (baseline).

One JSON line. Both sides evaluate the same fields at the same moments, in this run:
the baseline is astroplan computing altitude, airmass, moon-separation and night
constraints for every field at one time for one site (what a naive scheduler would do
per decision); ours is a complete decision (masks, features, argmax) for one group, and
a full-array decision (all 18 groups in turn, each seeing the others' claims).
"""

from __future__ import annotations

import json
import time
import tracemalloc
import warnings

import numpy as np

from brain.config import load_config, with_climate
from brain.core.survey import SurveyScheduler
from observatory.ephemeris import location
from observatory.sky import FieldGrid
from observatory.visibility import NightCache
from simulator.environment import make_environment


def main() -> None:
    config = with_climate(load_config(), "clear")
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid)
    night, sky = cache.get("2026-12-15")
    make_environment(config, 7, "2026-12-15", 1, "clear", cache)
    span = night.all_dark_interval()
    rng = np.random.default_rng(7)
    times = np.sort(rng.uniform(span[0], span[1] - 1800, 60))
    groups = config.groups

    # Ours: a warm scheduler (fields visited a while ago, groups pointing somewhere).
    sched = SurveyScheduler(config, grid.size)
    sched.state.last_visit[:] = span[0] - rng.uniform(0, 3600, grid.size)
    sched.state.last_group[:] = rng.integers(0, len(groups), grid.size)
    for g in groups:  # warm the per-site caches
        sched.choose(sky, 0, g.site, float(times[0]), grid.xyz[0])
    one, full = [], []
    for t in times:
        for gi, g in enumerate(groups):
            p = grid.xyz[rng.integers(grid.size)]
            t0 = time.perf_counter()
            sched.choose(sky, gi, g.site, float(t), p)
            one.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        claimed = []
        for gi, g in enumerate(groups):
            f = sched.choose(sky, gi, g.site, float(t), grid.xyz[rng.integers(grid.size)])
            if f is not None:
                sched.claim(f, gi)
                claimed.append(f)
        full.append((time.perf_counter() - t0) * 1e3)
        for f in claimed:
            sched.unclaim(f)

    # Baseline: astroplan's vectorised constraints over the same fields, one site, one time.
    import astropy.units as u
    from astroplan import (
        AirmassConstraint,
        AltitudeConstraint,
        AtNightConstraint,
        FixedTarget,
        MoonSeparationConstraint,
        Observer,
    )
    from astropy.coordinates import SkyCoord
    from astropy.time import Time

    site = config.sites[0]
    observer = Observer(location=location(site), name=site.id)
    targets = [FixedTarget(SkyCoord(ra=grid.ra_deg * u.deg, dec=grid.dec_deg * u.deg))]
    constraints = [AltitudeConstraint(min=30 * u.deg), AirmassConstraint(2.0),
                   AtNightConstraint.twilight_astronomical(),
                   MoonSeparationConstraint(min=30 * u.deg)]
    warnings.filterwarnings("ignore", message=".*NonRotationTransformation.*")
    from astropy.utils.exceptions import AstropyWarning

    warnings.simplefilter("ignore", AstropyWarning)
    base = []
    for t in times[:12]:
        tt = Time(t, format="unix")
        t0 = time.perf_counter()
        mask = np.ones(grid.size, bool)
        for c in constraints:
            mask &= np.asarray(c(observer, targets[0], times=tt)).ravel()
        base.append((time.perf_counter() - t0) * 1e3)

    tracemalloc.start()
    sched.choose(sky, 0, groups[0].site, float(times[0]), grid.xyz[0])
    peak_kib = tracemalloc.get_traced_memory()[1] / 1024
    tracemalloc.stop()
    p = lambda a, q: round(float(np.percentile(a, q)), 3)  # noqa: E731
    print(json.dumps({
        "bench": "scheduler", "fields": grid.size, "groups": len(groups),
        "decision_ms": {"p50": p(one, 50), "p99": p(one, 99), "n": len(one)},
        "full_array_decision_ms": {"p50": p(full, 50), "p99": p(full, 99), "n": len(full)},
        "baseline_astroplan_constraints_ms": {"p50": p(base, 50), "p99": p(base, 99),
                                              "n": len(base)},
        "speedup_vs_baseline_p50": round(float(np.median(base) / np.median(one)), 1),
        "decision_peak_alloc_kib": round(peak_kib, 1),
        "target_decision_p99_ms": 5.0,
    }))


if __name__ == "__main__":
    main()
