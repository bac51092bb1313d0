"""A run's environment: everything outside the brain's control, recorded for replay.

``environment.json`` holds the configuration, seed, dates and versions;
``environment.npz`` holds every site's weather series for every night and
``population.npz`` every variable and transient source of the sky. ``brain replay``
loads them and re-runs the nights against exactly the same sky and weather.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

import numpy as np

from observatory.arrayconfig import ArrayConfig
from observatory.visibility import NightCache
from simulator.population import Population, sample_population
from simulator.weather import STEP_S, WeatherSeries, generate

FORMAT = "sitian-environment/1"


@dataclass
class Environment:
    config: dict  # the array configuration as plain data
    seed: int
    start: str  # YYYY-MM-DD of the first night
    nights: int
    weather_mode: str
    weather: dict[tuple[int, str], WeatherSeries] = field(default_factory=dict)
    population: object | None = None  # simulator.population.Population

    def save(self, out_dir: Path) -> None:
        meta = {"format": FORMAT, "seed": self.seed, "start": self.start,
                "nights": self.nights, "weather_mode": self.weather_mode,
                "config": self.config,
                "weather_keys": [[n, s] for n, s in sorted(self.weather)]}
        (out_dir / "environment.json").write_text(json.dumps(meta, indent=1))
        arrays = {f"w{n}_{s}_{k}": v for (n, s), ws in self.weather.items()
                  for k, v in ws.arrays().items()}
        np.savez_compressed(out_dir / "environment.npz", **arrays)
        if self.population is not None:
            self.population.save(out_dir / "population.npz")

    @classmethod
    def load(cls, run_dir: Path) -> Environment:
        meta_path = run_dir / "environment.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{run_dir} holds no environment.json (not a run directory)")
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"{meta_path}: unknown environment format {fmt!r}")
        env = cls(meta["config"], int(meta["seed"]), meta["start"], int(meta["nights"]),
                  meta["weather_mode"])
        npz = run_dir / "environment.npz"
        try:
            with np.load(npz) as z:
                for n, s in meta["weather_keys"]:
                    env.weather[(n, s)] = WeatherSeries(
                        **{k: z[f"w{n}_{s}_{k}"] for k in WeatherSeries.__dataclass_fields__})
            pop_path = run_dir / "population.npz"
            if pop_path.is_file():
                npz = pop_path
                env.population = Population.load(pop_path)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            # A truncated or damaged archive (an interrupted copy): a ValueError naming it.
            raise ValueError(f"{npz} is damaged or truncated ({exc})") from None
        return env


WEATHER_LEAD_S = 3600.0  # weather starts this long before the first dusk


def night_dates(start: str, nights: int) -> list[str]:
    d0 = Date.fromisoformat(start)
    return [(d0 + timedelta(days=k)).isoformat() for k in range(nights)]


def make_environment(config: ArrayConfig, seed: int, start: str, nights: int,
                     weather_mode: str, cache: NightCache) -> Environment:
    """Draw a new environment: the weather of every site on every night."""
    env = Environment(config.model_dump(mode="json"), seed, start, nights, weather_mode)
    spans = []
    for k, d in enumerate(night_dates(start, nights)):
        night, _sky = cache.get(d)
        spans.append((night.t_begin, night.t_end))
        for s in config.sites:
            env.weather[(k, s.id)] = generate(config.climates[s.climate],
                                              night.t_begin - WEATHER_LEAD_S,
                                              night.t_end + STEP_S, seed, s.id, k)
    env.population = sample_population(
        None, None, config.camera.fov_deg2, spans[0][0], spans[-1][1],
        np.random.default_rng([seed, 0x5C1]), config.sky.density_scale,
        config.sky.faint_limit_mag)
    return env
