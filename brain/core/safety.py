"""Site safety: weather limits, with missing or stale data treated as unsafe.

Every verdict names the rule that decided it, so a refusal can say why and be counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from brain.core.events import Weather
from observatory.arrayconfig import Limits


@dataclass(frozen=True, slots=True)
class Verdict:
    safe: bool
    rule: str  # "ok" or the rule that failed
    detail: str = ""


def weather_verdict(limits: Limits, wx: Weather | None, t_unix: float) -> Verdict:
    """Is it safe to be open at ``t_unix`` given the latest weather report ``wx``?"""
    if wx is None:
        return Verdict(False, "weather_missing", "no weather data")
    age = t_unix - wx.t
    if age > limits.max_weather_age_s:
        return Verdict(False, "weather_stale", f"weather data {age:.0f} s old")
    if wx.rain and not limits.rain_ok:
        return Verdict(False, "rain", "rain")
    if not wx.wind_mps <= limits.max_wind_mps:  # NaN counts as unsafe
        return Verdict(False, "wind", f"wind {wx.wind_mps:.1f} m/s > {limits.max_wind_mps}")
    if not wx.humidity <= limits.max_humidity:
        return Verdict(False, "humidity", f"humidity {wx.humidity:.2f} > {limits.max_humidity}")
    return Verdict(True, "ok")
