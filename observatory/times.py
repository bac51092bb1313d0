"""Time conversions. Times are Unix seconds (UTC) in the protocol and the store; MJD
only where astronomy wants it (light curves, alerts)."""

from __future__ import annotations

import numpy as np

DAY_S = 86400.0
UNIX_TO_MJD = 1.0 / DAY_S
MJD_UNIX0 = 40587.0  # MJD of 1970-01-01T00:00:00 UTC


def unix_to_mjd(t_unix):
    """MJD (days) of Unix time(s) ``t_unix`` (s)."""
    return np.asarray(t_unix) * UNIX_TO_MJD + MJD_UNIX0


def mjd_to_unix(mjd):
    """Unix time(s) (s) of MJD ``mjd`` (days)."""
    return (np.asarray(mjd) - MJD_UNIX0) * DAY_S
