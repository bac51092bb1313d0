"""Spectroscopic follow-up, the rules the brain plans with and the simulator obeys: the
exposure a target of a given magnitude needs, the science reward of a spectrum, the
and the 4-m mounts (docs/contracts.md). A target's altitude is
:func:`observatory.visibility.target_alt_deg`."""

from __future__ import annotations

import numpy as np

from observatory.arrayconfig import Mount, Spectrograph

# The 4-m mounts: slower than the survey telescopes' (1 deg/s, 0.3 deg/s^2, 15 s settle).
SPEC_MOUNT = Mount(max_rate_deg_s=1.0, accel_deg_s2=0.3, settle_s=15.0)

# docs/contracts.md, "Science reward of one spectrum".
DEFAULT_REWARD = {"KN": 50.0, "TDE": 20.0, "SLSN": 15.0, "uLens": 10.0, "SNIbc": 5.0,
                  "SNII": 3.0, "SNIa": 3.0, "CV": 1.0, "Flare": 0.5, "AGN": 0.5,
                  "RRL": 0.0, "EB": 0.0, "DSCT": 0.0, "LPV": 0.0}
BEFORE_PEAK_FACTOR = 2.0

def exposure_s(spec: Spectrograph, mag) -> np.ndarray:
    """Science exposure (s) for a target of AB magnitude ``mag`` (docs/contracts.md)."""
    t = spec.base_exposure_s * 10 ** (0.4 * (np.asarray(mag, dtype=float) - spec.reference_mag))
    return np.clip(t, spec.min_exposure_s, spec.max_exposure_s)


def science_reward(true_class: str | None, label: str | None, before_peak: bool,
                   table: dict[str, float] | None = None,
                   factor: float = BEFORE_PEAK_FACTOR) -> float:
    """Reward of one spectrum: the class's value when the spectrum identified the source
    correctly, times ``factor`` when it was taken before the transient's peak; a
    spectrum without a label (too faint, an artefact, aborted) or with a wrong label
    earns nothing."""
    table = DEFAULT_REWARD if table is None else table
    if label is None or true_class is None or label != true_class:
        return 0.0
    return float(table.get(true_class, 0.0)) * (factor if before_peak else 1.0)
