"""An INDI weather station served to the brain as the site's SBP1 weather device
``{site}.wx`` (docs/indi.md, "Weather"; the shared rules: ``drivers/weather.py``).

INDI's weather interface (``INDI::WeatherInterface``, DRIVER_INTERFACE bit 128) publishes
``WEATHER_PARAMETERS`` (one number per sensor, resent every ``WEATHER_UPDATE`` period)
and ``WEATHER_STATUS`` (one light per critical parameter; the vector's state is the
station's verdict: ``Ok`` safe, ``Busy`` warning, ``Alert`` danger). The mapping:

==================  =======================================================================
``wind_mps``        ``WEATHER_WIND_SPEED`` (km/h) / 3.6
``humidity``        ``WEATHER_HUMIDITY`` (%) / 100
``rain``            ``WEATHER_RAIN_HOUR`` or ``WEATHER_RAIN_RATE`` (mm) above 0
``cloud``           ``WEATHER_CLOUD_COVER``, ``WEATHER_CLOUDS`` or ``WEATHER_CLOUD`` (%) / 100
``seeing_arcsec``   ``WEATHER_SEEING`` (arcsec)
``dew_margin_c``    ``WEATHER_TEMPERATURE`` - ``WEATHER_DEWPOINT`` (degC)
==================  =======================================================================

``WEATHER_STATUS`` ``Alert`` (or ``Idle``: not evaluated yet) is the station saying unsafe;
``WEATHER_PARAMETERS`` not updated for ``stale_s`` is stale. Both go to the brain as an
unsafe report.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from drivers.indi.client import ALERT, BUSY, IDLE, OK, IndiClient, IndiError, Vector
from drivers.weather import Reading, StationWeather

log = logging.getLogger("sitian.indi")

WEATHER_INTERFACE = 128
# SBP1 field -> (WEATHER_PARAMETERS elements, first present wins; conversion)
SENSORS: dict[str, tuple[tuple[str, ...], Any]] = {
    "wind_mps": (("WEATHER_WIND_SPEED",), lambda v: v / 3.6),
    "humidity": (("WEATHER_HUMIDITY",), lambda v: v / 100.0),
    "rain": (("WEATHER_RAIN_HOUR", "WEATHER_RAIN_RATE"), lambda v: v > 0.0),
    "cloud": (("WEATHER_CLOUD_COVER", "WEATHER_CLOUDS", "WEATHER_CLOUD"),
              lambda v: v / 100.0),
    "seeing_arcsec": (("WEATHER_SEEING",), float),
}


def indi_values(params: dict[str, Any]) -> dict[str, Any]:
    """SBP1 weather fields from ``WEATHER_PARAMETERS`` element values (see the table)."""
    out: dict[str, Any] = {}
    for name, (elements, convert) in SENSORS.items():
        for el in elements:
            if el in params:
                v = params[el]
                out[name] = convert(v) if math.isfinite(v) else math.nan
                break
    if "WEATHER_TEMPERATURE" in params and "WEATHER_DEWPOINT" in params:
        out["dew_margin_c"] = params["WEATHER_TEMPERATURE"] - params["WEATHER_DEWPOINT"]
    return out


class IndiWeather(StationWeather):
    """An INDI weather station (``station``: the device name, ``"auto"``: the device
    whose DRIVER_INTERFACE has the weather bit) as ``{site}.wx``."""

    def __init__(self, site: str, client: IndiClient, station: str = "auto",
                 device_id: str | None = None, assume: dict[str, Any] | None = None,
                 stale_s: float = 120.0, report_s: float = 30.0):
        super().__init__(site, device_id, assume, stale_s, report_s)
        self.client, self.station = client, station
        self._last_connect = -1e9
        client.on_define.append(self._on_define)

    # Start-up --------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect to the server and the station, wait for its first reading and check
        that every SBP1 field is measured or assumed; raises :class:`IndiError`."""
        t_end = time.monotonic() + timeout_s
        self.client.start(wait_s=timeout_s)

        def found() -> bool:
            devs = self.client.devices()
            if self.station == "auto":
                return any(b & WEATHER_INTERFACE for b in devs.values())
            return any(k == (self.station, "CONNECTION") for k in self.client.props)

        if not self.client.wait(found, max(0.1, t_end - time.monotonic())):
            seen = sorted(self.client.devices())
            raise IndiError(f"INDI server {self.client.host}:{self.client.port} lacks "
                            f"weather station {self.station!r} (devices seen: "
                            f"{seen or 'none'})")
        if self.station == "auto":
            time.sleep(0.2)  # the rest of the first getProperties answer
            devs = self.client.devices()
            self.station = sorted(d for d, b in devs.items() if b & WEATHER_INTERFACE)[0]
        self._connect()
        for prop in ("WEATHER_PARAMETERS", "WEATHER_STATUS"):
            if not self.client.wait(lambda p=prop: self._connected()
                                    and (self.station, p) in self.client.props,
                                    max(0.1, t_end - time.monotonic())):
                why = self.client.last_message(self.station) or f"no {prop}"
                raise IndiError(f"INDI weather station {self.station!r} did not connect: "
                                f"{why}")
        reading = self.read()
        missing = self.missing(reading) if reading is not None else list(SENSORS)
        if missing:
            names = ", ".join(f"{f} ({self._element(f)})" for f in missing)
            raise IndiError(f"INDI weather station {self.station!r} measures no {names}: "
                            "give --assume FIELD=VALUE for each")
        period = self.client.value(self.station, "WEATHER_UPDATE", "PERIOD")
        if period is not None and not 0 < period < self.stale_s:
            raise IndiError(f"INDI weather station {self.station!r} updates every "
                            f"{period:g} s (WEATHER_UPDATE; 0: never), not within --stale-s "
                            f"{self.stale_s:g}: its data would always be stale")
        self._take(reading)
        log.info("INDI weather station %r as %s", self.station, self.id)

    @staticmethod
    def _element(name: str) -> str:
        if name == "dew_margin_c":
            return "WEATHER_TEMPERATURE and WEATHER_DEWPOINT"
        return " or ".join(SENSORS[name][0])

    def _connected(self) -> bool:  # called under the client's lock
        vec = self.client.props.get((self.station, "CONNECTION"))
        return vec is not None and vec.values.get("CONNECT") is True and vec.state == OK

    def _connect(self) -> None:
        now = time.monotonic()
        if now - self._last_connect < 5.0:
            return
        self._last_connect = now
        try:
            self.client.new_switch(self.station, "CONNECTION",
                                   {"CONNECT": True, "DISCONNECT": False})
        except IndiError as exc:
            log.warning("cannot connect %s: %s", self.station, exc)

    def _on_define(self, vec: Vector) -> None:
        # A (re)defined CONNECTION that is off: the driver or server restarted.
        if (vec.device == self.station and vec.name == "CONNECTION"
                and vec.values.get("CONNECT") is not True):
            self._last_connect = -1e9
            self._connect()

    # Reading ---------------------------------------------------------------------------
    def down_reason(self) -> str:
        if not self.client.connected:
            return (f"INDI server {self.client.host}:{self.client.port} not connected "
                    f"({self.client.last_error or 'no answer'})")
        return f"INDI weather station {self.station!r} not connected"

    def read(self) -> Reading | None:
        if not self.client.connected:
            return None
        with self.client.cond:
            if not self._connected():
                return None
        params = self.client.get(self.station, "WEATHER_PARAMETERS")
        if params is None:
            return None
        status = self.client.get(self.station, "WEATHER_STATUS")
        values = indi_values(params.values)
        extra: dict[str, Any] = {"station": self.station,
                                 "indi": f"{self.client.host}:{self.client.port}"}
        if status is None:
            return Reading(values, params.updated, False, "no WEATHER_STATUS", extra)
        extra["station_status"] = status.state
        alert = [k for k, v in status.values.items() if v == ALERT]
        if status.state == ALERT:
            return Reading(values, params.updated, False,
                           f"WEATHER_STATUS Alert ({', '.join(alert) or 'no light named'})",
                           extra)
        if status.state == IDLE:
            return Reading(values, params.updated, False,
                           "WEATHER_STATUS Idle (not evaluated yet)", extra)
        if status.state == BUSY:  # a warning: the values and the brain's limits decide
            extra["warning"] = [k for k, v in status.values.items() if v == BUSY]
        return Reading(values, params.updated, True, "", extra)
