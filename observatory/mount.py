"""Mount kinematics: a trapezoidal velocity profile on the great-circle separation."""

from __future__ import annotations

import numpy as np

from observatory.arrayconfig import Mount


def slew_time_s(separation_deg, mount: Mount) -> np.ndarray:
    """Time (s) to move ``separation_deg`` (deg) from rest to rest, without settle.

    Accelerate at ``accel_deg_s2`` up to ``max_rate_deg_s``, cruise, decelerate; a short
    move never reaches the top rate (triangle profile)."""
    d = np.abs(np.asarray(separation_deg, dtype=float))
    v, a = mount.max_rate_deg_s, mount.accel_deg_s2
    d_ramp = v * v / a  # distance covered accelerating to v and braking back to rest
    return np.where(d >= d_ramp, d / v + v / a, 2.0 * np.sqrt(d / a))


def move_time_s(separation_deg, mount: Mount) -> np.ndarray:
    """Slew plus settle (s); zero when the telescope does not move."""
    d = np.asarray(separation_deg, dtype=float)
    return np.where(d > 1e-9, slew_time_s(d, mount) + mount.settle_s, 0.0)


def peak_rate_deg_s(separation_deg, mount: Mount) -> np.ndarray:
    """Highest angular rate (deg/s) reached on that move."""
    d = np.abs(np.asarray(separation_deg, dtype=float))
    return np.minimum(mount.max_rate_deg_s, np.sqrt(d * mount.accel_deg_s2))
