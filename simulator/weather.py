"""Per-site weather as a seeded stochastic process.

Spells of clear, cloudy or closed (unsafe) weather follow each other with exponential
lengths (mean ``mean_spell_h``); each spell's kind is drawn from the climate's long-run
fractions, so those are the fractions of time. Inside spells, wind and humidity are
Ornstein-Uhlenbeck processes around the climate means, seeing is log-normal with
persistence; a closed spell is caused by wind, humidity or rain. Values are sampled on a
fixed grid and held between samples, so a recorded series replays exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields

import numpy as np

from observatory.arrayconfig import Climate

STEP_S = 60.0
CLEAR, CLOUDY, CLOSED = 0, 1, 2


@dataclass
class WeatherSeries:
    """One site's weather on a ``STEP_S`` grid (values hold until the next sample)."""

    t_unix: np.ndarray
    wind_mps: np.ndarray
    humidity: np.ndarray
    rain: np.ndarray
    cloud: np.ndarray
    seeing_arcsec: np.ndarray
    dew_margin_c: np.ndarray

    def index(self, t_unix) -> np.ndarray:
        return np.clip(np.searchsorted(self.t_unix, t_unix, side="right") - 1, 0,
                       len(self.t_unix) - 1)

    def at(self, t_unix: float) -> dict[str, float | bool]:
        k = int(self.index(t_unix))
        return {"wind_mps": float(self.wind_mps[k]), "humidity": float(self.humidity[k]),
                "rain": bool(self.rain[k]), "cloud": float(self.cloud[k]),
                "seeing_arcsec": float(self.seeing_arcsec[k]),
                "dew_margin_c": float(self.dew_margin_c[k])}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _ou(rng, n: int, mean: float, sd: float, tau_s: float) -> np.ndarray:
    phi = np.exp(-STEP_S / tau_s)
    noise = rng.standard_normal(n) * sd * np.sqrt(1 - phi * phi)
    x = np.empty(n)
    x[0] = mean + sd * rng.standard_normal()
    for k in range(1, n):
        x[k] = mean + phi * (x[k - 1] - mean) + noise[k]
    return x


def generate(climate: Climate, t0_unix: float, t1_unix: float, seed: int, site_id: str,
             night: int = 0) -> WeatherSeries:
    """A site's weather from ``t0_unix`` to ``t1_unix``, determined by the seed, the site
    id and the night number."""
    rng = np.random.default_rng([seed, zlib.crc32(site_id.encode()), night])
    t = np.arange(t0_unix, t1_unix + STEP_S, STEP_S)
    n = len(t)
    probs = np.array([climate.clear_fraction,
                      1 - climate.clear_fraction - climate.closed_fraction,
                      climate.closed_fraction])
    state = np.empty(n, dtype=np.int8)
    cause = np.zeros(n, dtype=np.int8)  # for closed spells: 0 wind, 1 humidity, 2 rain
    k = 0
    while k < n:
        length = max(1, int(rng.exponential(climate.mean_spell_h * 3600 / STEP_S)))
        state[k:k + length] = rng.choice(3, p=probs / probs.sum())
        cause[k:k + length] = rng.integers(3)
        k += length
    wind = np.abs(_ou(rng, n, climate.wind_mean_mps, climate.wind_sd_mps, 3600.0))
    humidity = np.clip(_ou(rng, n, climate.humidity_mean, climate.humidity_sd, 7200.0), 0.02, 1)
    seeing = climate.seeing_median_arcsec * 10 ** _ou(rng, n, 0.0, climate.seeing_sigma_dex,
                                                      1800.0)
    cloud = np.where(state == CLEAR, np.clip(rng.normal(0.02, 0.02, n), 0, 0.1),
                     np.clip(rng.normal(0.55, 0.15, n), 0.2, 0.9))
    closed = state == CLOSED
    wind = np.where(closed & (cause == 0), np.maximum(wind, 0) + 16.0 + rng.exponential(3, n),
                    wind)
    humidity = np.where(closed & (cause >= 1), np.clip(rng.normal(0.93, 0.03, n), 0.87, 1.0),
                        humidity)
    rain = closed & (cause == 2)
    cloud = np.where(closed, np.clip(rng.normal(0.9, 0.05, n), 0.7, 1.0), cloud)
    dew_margin = (1 - humidity) * 20.0  # Magnus rule of thumb: T - Td ~ (100 - RH%) / 5
    return WeatherSeries(t, wind, humidity, rain, cloud, seeing, dew_margin)
