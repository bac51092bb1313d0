"""What the core hears (events) and what it says (commands).

Commands mirror docs/protocol.md's ``COMMAND`` body so the daemon shell can put them on the
wire unchanged; events mirror ``DONE``/``FAILED``/``EVENT`` bodies plus the shells' clock.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from drivers.protocol import IDEMPOTENT_COMMANDS

_ids = itertools.count(1)
_prefix = ["c"]


def set_command_prefix(prefix: str) -> None:
    """Command ids become ``{prefix}{n}``: the daemon uses its session, so ids never repeat
    across restarts (devices remember finished ids and would not act on a reused one)."""
    _prefix[0] = prefix

IDEMPOTENT = IDEMPOTENT_COMMANDS  # docs/protocol.md: the brain may resend these


@dataclass(slots=True)
class Command:
    device: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    cmd_id: str = field(default_factory=lambda: f"{_prefix[0]}{next(_ids)}")
    deadline: float = 0.0  # world time (unix s)

    @property
    def idempotent(self) -> bool:
        return self.name in IDEMPOTENT


@dataclass(slots=True)
class Tick:
    """The shell's clock: sent at least once a minute of world time."""

    t: float


@dataclass(slots=True)
class Weather:
    t: float
    site: str
    wind_mps: float
    humidity: float
    rain: bool
    cloud: float
    seeing_arcsec: float
    dew_margin_c: float
    # The station's own verdict (docs/protocol.md, "weather"): False closes the site
    # whatever the values say (rule ``station``); the reason is for the operators.
    station_safe: bool = True
    station_reason: str = ""


@dataclass(slots=True)
class Done:
    t: float
    device: str
    cmd_id: str
    result: dict[str, Any]


@dataclass(slots=True)
class Failed:
    t: float
    device: str
    cmd_id: str
    code: str
    message: str


@dataclass(slots=True)
class DetectionsEvent:
    """Detections from one or more exposures (a pipeline's or the simulator's)."""

    t: float
    batch: Any  # brain.core.association.DetectionBatch


@dataclass(slots=True)
class DeviceState:
    """A device came up (welcomed) or went down (dead, said BYE). Daemon shell only: the
    fast shell's devices are always up."""

    t: float
    device: str
    up: bool


@dataclass(slots=True)
class Operator:
    """An operator's approved action (a validated planner tool call, brain.planner.tools): the
    same path in both shells; the core applies it and returns the commands it needs."""

    t: float
    tool: str
    args: dict[str, Any]


Event = Tick | Weather | Done | Failed | DetectionsEvent | DeviceState | Operator
