"""An ASCOM Alpaca ObservingConditions device and/or SafetyMonitor served to the brain as
the site's SBP1 weather device ``{site}.wx`` (docs/alpaca.md, "Weather"; the shared
rules: ``drivers/weather.py``).

==================  ========================================================================
``wind_mps``        ``WindSpeed`` (m/s)
``humidity``        ``Humidity`` (%) / 100
``rain``            ``RainRate`` (mm/h) above 0
``cloud``           ``CloudCover`` (%) / 100
``seeing_arcsec``   ``StarFWHM`` (arcsec)
``dew_margin_c``    ``Temperature`` - ``DewPoint`` (degC)
==================  ========================================================================

``SafetyMonitor.IsSafe`` false is the station saying unsafe. The data are as old as the
last poll that answered (less ``TimeSinceLastUpdate("")`` when the driver gives it).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from drivers.alpaca.client import AGE_PROP, AlpacaClient, AlpacaError
from drivers.weather import Reading, StationWeather

log = logging.getLogger("sitian.alpaca")

CONDITIONS = ("WindSpeed", "Humidity", "RainRate", "CloudCover", "StarFWHM", "Temperature",
              "DewPoint")
SOURCES = {"wind_mps": "WindSpeed", "humidity": "Humidity", "rain": "RainRate",
           "cloud": "CloudCover", "seeing_arcsec": "StarFWHM",
           "dew_margin_c": "Temperature and DewPoint"}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def conditions_values(p: dict[str, Any]) -> dict[str, Any]:
    """SBP1 weather fields from ObservingConditions values (None: not implemented)."""
    out: dict[str, Any] = {}
    conv = {"wind_mps": ("WindSpeed", lambda v: v), "humidity": ("Humidity", lambda v: v / 100),
            "rain": ("RainRate", lambda v: v > 0.0), "cloud": ("CloudCover", lambda v: v / 100),
            "seeing_arcsec": ("StarFWHM", lambda v: v)}
    for name, (prop, fn) in conv.items():
        v = _num(p.get(prop))
        if v is not None:
            out[name] = fn(v) if math.isfinite(v) else math.nan
    t, td = _num(p.get("Temperature")), _num(p.get("DewPoint"))
    if t is not None and td is not None:
        out["dew_margin_c"] = t - td
    return out


class AlpacaWeather(StationWeather):
    """ObservingConditions ``conditions`` and/or SafetyMonitor ``safety`` (device numbers;
    None: absent) of one Alpaca server as ``{site}.wx``."""

    def __init__(self, site: str, client: AlpacaClient, conditions: int | None = 0,
                 safety: int | None = 0, device_id: str | None = None,
                 assume: dict[str, Any] | None = None, stale_s: float = 60.0,
                 report_s: float = 30.0):
        super().__init__(site, device_id, assume, stale_s, report_s)
        if conditions is None and safety is None:
            raise ValueError("give an ObservingConditions (--conditions N) or a "
                             "SafetyMonitor (--safety N), or both")
        self.client = client
        self.roles = []
        if conditions is not None:
            client.add("observingconditions", conditions, (*CONDITIONS, AGE_PROP))
            self.roles.append("observingconditions")
        if safety is not None:
            client.add("safetymonitor", safety, ("IsSafe",))
            self.roles.append("safetymonitor")

    def start(self, timeout_s: float = 30.0) -> None:
        """Check and connect the devices, read them once and check that every SBP1 field
        is measured or assumed; raises :class:`AlpacaError`."""
        self.client.start(wait_s=timeout_s)
        reading = self.read()
        if reading is None:
            raise AlpacaError(f"Alpaca weather devices not answering: "
                              f"{'; '.join(self.client.down())}")
        missing = self.missing(reading)
        if missing:
            names = ", ".join(f"{f} ({SOURCES[f]})" for f in missing)
            where = ("its ObservingConditions measure" if "observingconditions" in self.roles
                     else "without ObservingConditions it measures")
            raise AlpacaError(f"Alpaca server {self.client.address}: {where} no {names}: "
                              "give --assume FIELD=VALUE for each")
        self._take(reading)
        log.info("Alpaca weather (%s) as %s", ", ".join(self.roles), self.id)

    def down_reason(self) -> str:
        return f"Alpaca weather devices not answering: {'; '.join(self.client.down())}"

    def read(self) -> Reading | None:
        if any(not self.client.ok(r) for r in self.roles):
            return None
        updated = min(self.client.updated(r) or -math.inf for r in self.roles)
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {"alpaca": self.client.address}
        if "observingconditions" in self.roles:
            values = conditions_values({p: self.client.get("observingconditions", p)
                                        for p in CONDITIONS})
            age = _num(self.client.get("observingconditions", AGE_PROP))
            if age is not None and math.isfinite(age) and age > 0:
                updated -= age  # the sensors' own age: a server may answer on old data
                extra["sensor_age_s"] = round(age, 1)
        safe, why = None, ""
        if "safetymonitor" in self.roles:
            is_safe = self.client.get("safetymonitor", "IsSafe")
            safe = is_safe is True
            extra["is_safe"] = is_safe
            why = "" if safe else f"SafetyMonitor.IsSafe is {is_safe}"
        return Reading(values, min(updated, time.monotonic()), safe, why, extra)
