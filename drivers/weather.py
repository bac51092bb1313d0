"""A site's weather station served as its SBP1 weather device ``{site}.wx``: the part the
INDI bridge (``drivers/indi/weather.py``) and the ASCOM Alpaca bridge
(``drivers/alpaca/weather.py``) share (docs/indi.md and docs/alpaca.md, "Weather").

A bridge reads its station into a :class:`Reading`: the SBP1 weather fields it measures,
the station's own safety verdict and the time of its last update. This module turns
readings into ``weather`` events the brain judges with its own rules (docs/safety.md):

* fields the station does not measure come from ``--assume FIELD=VALUE``; a bridge
  refuses to start with a field it has neither for;
* **unsafe**, whether the station says so (INDI ``WEATHER_STATUS`` Alert, an ASCOM
  ``SafetyMonitor.IsSafe`` of false), a measured field has no valid value, or its data
  are **stale** (no update for ``stale_s``), goes out as a report with the values as
  last measured and the protocol's optional ``station_safe: false`` with
  ``station_reason`` saying why (docs/protocol.md, "weather"): the brain closes the site
  whatever its limits (rule ``station``);
* a report goes out when the values or the verdict change, after every (re)connection
  to the brain, and at least every ``report_s``, so that the brain's own age check
  (``max_weather_age_s``) only fires when the bridge itself is gone.

Missing data is unsafe: before the station's first reading the bridge sends nothing
(the brain's ``weather_missing``), and a station that stops updating is reported unsafe
after ``stale_s``, with its last values.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from drivers.device import Device
from drivers.protocol import STATION_REASON_MAX, WEATHER_FIELDS

log = logging.getLogger("sitian.weather")

FIELDS = tuple(WEATHER_FIELDS)  # wind_mps, humidity, rain, cloud, seeing_arcsec, dew_margin_c
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass
class Reading:
    """What a station says now: the SBP1 fields it measures (``values``; a non-finite
    number is a sensor without a valid value), its own verdict (``safe``: None if it
    gives none) and why, and ``updated``, the ``time.monotonic()`` of its last update."""

    values: dict[str, Any]
    updated: float
    safe: bool | None = None
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # for the state map


def parse_assume(items: list[str] | None) -> dict[str, Any]:
    """``["humidity=0.5", "rain=false"]`` -> ``{"humidity": 0.5, "rain": False}``;
    ValueError (one line) naming the bad item."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or name not in FIELDS:
            raise ValueError(f"--assume {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(FIELDS)}")
        if name == "rain":
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(f"--assume {item!r}: rain is true or false")
            out[name] = text.lower() in _TRUE
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"--assume {item!r}: {name} needs a finite number")
        out[name] = value
    return out


class StationWeather(Device):
    """The SBP1 weather device of a station; subclasses implement :meth:`read` (and a
    ``start``). ``assume``: values for the fields the station does not measure."""

    kind = "weather"
    capabilities = ("status",)

    def __init__(self, site: str, device_id: str | None = None,
                 assume: dict[str, Any] | None = None, stale_s: float = 120.0,
                 report_s: float = 30.0):
        super().__init__(device_id or f"{site}.wx", site)
        if not stale_s > 0 or not report_s > 0:
            raise ValueError("--stale-s and --report-s must be positive")
        self.assume = dict(assume or {})
        self.stale_s, self.report_s = float(stale_s), float(report_s)
        self._values: dict[str, Any] = {}  # the last valid value of each measured field
        self._invalid: list[str] = []  # measured fields whose latest value is not valid
        self._updated: float | None = None
        self._verdict: tuple[bool | None, str] = (None, "")
        self._extra: dict[str, Any] = {}
        self._down = ""
        self._next_report = 0.0
        self._last_sig: tuple | None = None
        self.reports = 0

    # What a bridge provides ---------------------------------------------------------------
    def read(self) -> Reading | None:
        """The station now, or None when it cannot be read (server or device gone)."""
        raise NotImplementedError

    def down_reason(self) -> str:
        """Why :meth:`read` gave None (for the state map)."""
        return "station not reachable"

    # The shared part ------------------------------------------------------------------
    def missing(self, reading: Reading) -> list[str]:
        """The SBP1 fields neither measured by ``reading`` nor assumed."""
        return [f for f in FIELDS if f not in reading.values and f not in self.assume]

    def _take(self, r: Reading) -> None:
        self._invalid = []
        for name, value in r.values.items():
            if name == "rain":
                self._values[name] = bool(value)
            elif isinstance(value, int | float) and math.isfinite(value):
                self._values[name] = float(value)
            else:
                self._invalid.append(name)
        self._updated, self._verdict, self._extra = r.updated, (r.safe, r.why), dict(r.extra)

    def assess(self) -> tuple[dict | None, str | None, float]:
        """The report to send now (None: nothing to say yet), why it is unsafe (None:
        the values decide) and the age of the station's data (s)."""
        r = self.read()
        if r is not None:
            self._take(r)
            self._down = ""
        else:
            self._down = self.down_reason()
        if self._updated is None:
            return None, "no data from the station yet", math.inf
        values = {**self.assume, **self._values}
        if any(f not in values for f in FIELDS):
            return None, f"no value for {[f for f in FIELDS if f not in values]}", math.inf
        report: dict[str, Any] = {f: values[f] for f in FIELDS}
        age = max(0.0, time.monotonic() - self._updated)
        safe, why = self._verdict
        unsafe = None
        if age > self.stale_s:
            unsafe = (f"stale: no update from the station for {age:.0f} s (limit "
                      f"{self.stale_s:g} s)" + (f"; {self._down}" if self._down else ""))
        elif self._invalid:
            unsafe = f"the station reports no valid {', '.join(self._invalid)}"
        elif safe is False:
            unsafe = f"the station says unsafe: {why or 'no reason given'}"
        report["station_safe"] = unsafe is None
        if unsafe is not None:
            report["station_reason"] = unsafe[:STATION_REASON_MAX]
        return report, unsafe, age

    def hello(self, now: float) -> dict:
        # A HELLO precedes every (re)welcome: report at once once welcomed.
        self._next_report, self._last_sig = 0.0, None
        return super().hello(now)

    def events(self, now: float):
        report, unsafe, _age = self.assess()
        if report is None:
            return ()
        sig = (tuple(report[f] for f in FIELDS), unsafe is None)
        mono = time.monotonic()
        if sig == self._last_sig and mono < self._next_report:
            return ()
        if sig[1] != (self._last_sig or (None, None))[1]:
            log.info("%s: %s", self.id, "safe" if unsafe is None else f"unsafe ({unsafe})")
        self._last_sig, self._next_report = sig, mono + self.report_s
        self.reports += 1
        return [("weather", report)]

    def state(self, now: float) -> dict:
        report, unsafe, age = self.assess()
        out: dict[str, Any] = {**(report or {}), **self._extra}
        out.pop("station_reason", None)
        out.pop("station_safe", None)
        out["safe"] = report is not None and unsafe is None
        if math.isfinite(age):
            out["age_s"] = round(age, 1)
        if report is None or age > self.stale_s or self._down:
            out.update(state="fault", fault=self._down or unsafe or "no data")
        else:
            out["state"] = "idle"
        if unsafe is not None:
            out["unsafe"] = unsafe
        return out
