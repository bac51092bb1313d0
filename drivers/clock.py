"""World time for the daemon and the drivers.

docs/protocol.md separates two clocks: world time (Unix seconds UTC; simulated when a
rehearsal runs with ``--start``/``--speed``) stamps messages, deadlines, ETAs, results and
events; link timing (heartbeats, the 1 s ACK limit, ``failsafe_s``) is wall-clock time
(``time.monotonic``). A simulated clock starts at ``start`` and runs ``speed`` times real
time; both sides of a rehearsal given the same ``--start``/``--speed`` agree to within
their start-up delay, and a driver that lags simply reports later world times.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class WorldClock:
    def __init__(self, start: float | None = None, speed: float = 1.0):
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = float(speed)
        self.start = time.time() if start is None else float(start)
        self._m0 = time.monotonic()

    @property
    def simulated(self) -> bool:
        return self.speed != 1.0 or abs(self.start - time.time()) > 5.0

    def now(self) -> float:
        """World time, Unix seconds UTC."""
        return self.start + (time.monotonic() - self._m0) * self.speed

    def sync(self, t_world: float) -> None:
        """Set world time to ``t_world`` now (simulated drivers follow the brain)."""
        self.start, self._m0 = float(t_world), time.monotonic()

    def wall_s(self, world_s: float) -> float:
        """Wall seconds that ``world_s`` seconds of world time take."""
        return world_s / self.speed


def parse_start(text: str | None) -> float | None:
    """``--start`` as Unix seconds: an ISO date or date-time, UTC unless it says
    otherwise (docs/protocol.md: ISO times there are UTC). ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r} is not an ISO date or date-time "
                         "(e.g. 2026-12-15T12:00:00)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
