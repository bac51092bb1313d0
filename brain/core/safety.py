"""Site safety: weather limits, with missing, stale or impossible data treated as unsafe.

Every verdict names the rule that decided it, so a refusal can say why and be counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from brain.core.events import Weather
from observatory.arrayconfig import Limits

# The physical range of each number a weather report carries (docs/safety.md):
# field -> (low, high, low bound excluded, unit). A value outside it (NaN included) comes
# from a broken sensor or driver and is treated as missing data: unsafe.
WEATHER_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "wind_mps": (0.0, 120.0, False, " m/s"),  # above the highest gust ever measured
    "humidity": (0.0, 1.0, False, ""),
    "cloud": (0.0, 1.0, False, ""),
    "seeing_arcsec": (0.0, 60.0, True, " arcsec"),  # a FWHM: strictly positive
    "dew_margin_c": (-5.0, 100.0, False, " °C"),  # T - T_dew >= 0, less sensor slack
}


@dataclass(frozen=True, slots=True)
class Verdict:
    safe: bool
    rule: str  # "ok" or the rule that failed
    detail: str = ""


def out_of_range(wx: Weather) -> list[str]:
    """The fields of ``wx`` outside their physical range, in :data:`WEATHER_RANGES` order."""
    bad = []
    for name, (lo, hi, lo_open, _unit) in WEATHER_RANGES.items():
        v = getattr(wx, name)
        if not ((lo < v if lo_open else lo <= v) and v <= hi):  # NaN fails both
            bad.append(name)
    return bad


def weather_verdict(limits: Limits, wx: Weather | None, t_unix: float) -> Verdict:
    """Is it safe to be open at ``t_unix`` given the latest weather report ``wx``?"""
    if wx is None:
        return Verdict(False, "weather_missing", "no weather data")
    age = t_unix - wx.t
    if age > limits.max_weather_age_s:
        return Verdict(False, "weather_stale", f"weather data {age:.0f} s old")
    bad = out_of_range(wx)
    if bad:
        name = bad[0]
        lo, hi, lo_open, unit = WEATHER_RANGES[name]
        return Verdict(False, "weather_invalid",
                       f"{name} {getattr(wx, name):g} outside {'(' if lo_open else '['}"
                       f"{lo:g}, {hi:g}]{unit}: treated as missing")
    if not wx.station_safe:
        return Verdict(False, "station", "the station says unsafe: "
                       + (wx.station_reason or "no reason given"))
    if wx.rain and not limits.rain_ok:
        return Verdict(False, "rain", "rain")
    if not wx.wind_mps <= limits.max_wind_mps:
        return Verdict(False, "wind", f"wind {wx.wind_mps:.1f} m/s > {limits.max_wind_mps}")
    if not wx.humidity <= limits.max_humidity:
        return Verdict(False, "humidity", f"humidity {wx.humidity:.2f} > {limits.max_humidity}")
    return Verdict(True, "ok")
