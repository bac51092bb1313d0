"""The MiniSiTian world: telescopes that execute commands against the simulated sky.

Commands arrive as (device, name, args, cmd_id) with the world time; the world answers
with replies due at later world times (DONE at the end of a slew or when the shutter
closes, FAILED at once). Mount moves follow ``observatory.mount``; the camera reads out
while the mount slews to the next field; every finished exposure is logged with the
true geometry and its limiting magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from observatory.arrayconfig import ArrayConfig
from observatory.depth import limiting_mag
from observatory.mount import move_time_s, slew_time_s
from observatory.records import observations_array
from observatory.sky import separation_deg
from observatory.visibility import FieldSky, airmass
from simulator.weather import WeatherSeries


@dataclass(slots=True)
class Reply:
    t: float
    device: str
    cmd_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    message: str = ""
    generation: int = 0


@dataclass(slots=True)
class Telescope:
    device: str
    site: str
    group: int
    band: str
    ra_deg: float | None = None  # None: parked at the zenith
    dec_deg: float | None = None
    is_open: bool = False
    busy_until: float = -math.inf
    readout_until: float = -math.inf
    generation: int = 0
    exposure: dict[str, Any] | None = None


class World:
    def __init__(self, config: ArrayConfig):
        self.config = config
        self.telescopes: dict[str, Telescope] = {}
        for g in config.groups:
            for band in config.camera.bands:
                dev = g.telescope(band)
                self.telescopes[dev] = Telescope(dev, g.site, g.number, band)
        self.sky: FieldSky | None = None
        self.weather: dict[str, WeatherSeries] = {}
        self._obs_rows: list[tuple] = []  # tonight's, as tuples
        self._obs_parts: list[np.ndarray] = []  # earlier nights', compacted
        self.slews: list[tuple[str, float, float, float]] = []  # device, t, sep, duration
        self._slew_parts: list[np.ndarray] = []  # earlier nights' slew durations (moves)
        self.aborted = 0
        self.finished: list[tuple[int, int, float, float]] = []  # field, band, t_mid, m5
        self._geometry_cache: dict[tuple[int, float, str], tuple] = {}
        self.spec = None  # simulator.spectroscopy.Spectrographs, when the sky has sources

    @property
    def observations(self) -> np.ndarray:
        """Every finished exposure so far (OBS_DTYPE, in order)."""
        self.compact()
        if len(self._obs_parts) > 1:
            self._obs_parts = [np.concatenate(self._obs_parts)]
        return self._obs_parts[0] if self._obs_parts else observations_array([])

    def slew_durations(self) -> np.ndarray:
        """Durations (s) of every slew that moved."""
        self.compact()
        return (np.concatenate(self._slew_parts) if self._slew_parts
                else np.zeros(0))

    def compact(self) -> None:
        """Tonight's exposure and slew records into compact arrays (the fast shell calls
        it at each night's end: a season's log stays arrays, not Python tuples)."""
        if self._obs_rows:
            self._obs_parts.append(observations_array(self._obs_rows))
            self._obs_rows = []
        if self.slews:
            self._slew_parts.append(np.array([s[3] for s in self.slews if s[2] > 0],
                                             dtype=np.float64))
            self.slews = []

    def attach_spectrographs(self, spectrographs) -> None:
        self.spec = spectrographs

    def begin_night(self, sky: FieldSky, weather: dict[str, WeatherSeries]) -> None:
        self.sky = sky
        self.weather = weather
        self._geometry_cache.clear()
        if self.spec is not None:
            self.spec.begin_night(sky)

    # Commands ------------------------------------------------------------------
    def execute(self, device: str, name: str, args: dict, cmd_id: str, t: float) -> Reply:
        tel = self.telescopes.get(device)
        if tel is None:
            if self.spec is not None and device in self.spec:
                return self.spec.execute(device, name, args, cmd_id, t)
            return Reply(t, device, cmd_id, False, code="unknown_device", message=device)
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            return Reply(t, device, cmd_id, False, code="unknown_command", message=name)
        if name not in ("abort", "close", "park", "status") and t < tel.busy_until:
            return Reply(t, device, cmd_id, False, code="busy", message="telescope busy")
        reply = handler(tel, args, cmd_id, t)
        reply.generation = tel.generation
        return reply

    def is_current(self, reply: Reply) -> bool:
        """False for a reply that an abort overtook."""
        if self.spec is not None and reply.device in self.spec:
            return self.spec.is_current(reply)
        if reply.device not in self.telescopes:
            return True  # a refusal for an unknown device
        return reply.generation == self.telescopes[reply.device].generation

    def _cmd_open(self, tel, args, cmd_id, t):
        tel.is_open = True
        return Reply(t, tel.device, cmd_id, True, {"state": "idle"})

    def _cmd_close(self, tel, args, cmd_id, t):
        self._abort(tel, t)
        tel.is_open = False
        return Reply(t, tel.device, cmd_id, True, {"state": "closed"})

    def _cmd_park(self, tel, args, cmd_id, t):
        self._abort(tel, t)
        tel.ra_deg = tel.dec_deg = None
        return Reply(t, tel.device, cmd_id, True, {"state": "parked"})

    def _cmd_status(self, tel, args, cmd_id, t):
        state = ("closed" if not tel.is_open else "parked" if tel.ra_deg is None
                 else "busy" if t < tel.busy_until else "idle")
        return Reply(t, tel.device, cmd_id, True,
                     {"state": state, "ra_deg": tel.ra_deg, "dec_deg": tel.dec_deg})

    def _cmd_abort(self, tel, args, cmd_id, t):
        self._abort(tel, t)
        return Reply(t, tel.device, cmd_id, True, {})

    def _abort(self, tel: Telescope, t: float) -> None:
        if t < tel.busy_until:
            tel.generation += 1  # the pending DONE is now stale
            if tel.exposure is not None:
                self.aborted += 1
            tel.busy_until = t
        tel.exposure = None

    def _pointing(self, tel: Telescope, t: float) -> tuple[float, float]:
        if tel.ra_deg is None:  # parked at the zenith
            eph = self.sky.night.sites[tel.site]
            return float(eph.lst_deg(t)), eph.site.lat_deg
        return tel.ra_deg, tel.dec_deg

    def _cmd_slew(self, tel, args, cmd_id, t):
        if not tel.is_open:
            return Reply(t, tel.device, cmd_id, False, code="device_fault", message="closed")
        ra0, dec0 = self._pointing(tel, t)
        sep = float(separation_deg(ra0, dec0, args["ra_deg"], args["dec_deg"]))
        duration = float(move_time_s(sep, self.config.mount))
        self.slews.append((tel.device, t, sep, float(slew_time_s(sep, self.config.mount))))
        tel.ra_deg, tel.dec_deg = float(args["ra_deg"]), float(args["dec_deg"])
        tel.busy_until = t + duration
        return Reply(t + duration, tel.device, cmd_id, True,
                     {"ra_deg": tel.ra_deg, "dec_deg": tel.dec_deg})

    def _cmd_expose(self, tel, args, cmd_id, t):
        if not tel.is_open or tel.ra_deg is None:
            return Reply(t, tel.device, cmd_id, False, code="device_fault",
                         message="closed or parked")
        t_start = max(t, tel.readout_until)
        t_end = t_start + float(args["seconds"])
        tel.busy_until = t_end
        tel.readout_until = t_end + self.config.camera.readout_s
        field_id = int(args["field_id"])
        alt, am, moon_sep, sun_alt, lim, seeing = self._geometry(tel, field_id, t_start, t_end,
                                                                 float(args["seconds"]))
        tel.exposure = {"obs_id": args["obs_id"], "field_id": field_id}
        row = (args["obs_id"], tel.device, tel.site, tel.group, tel.band, field_id, tel.ra_deg,
               tel.dec_deg, t_start, t_end, alt, am, moon_sep, sun_alt, lim)
        return Reply(t_end, tel.device, cmd_id, True,
                     {"obs_id": args["obs_id"], "t_start": t_start, "t_end": t_end,
                      "limiting_mag": lim, "seeing_arcsec": seeing, "airmass": am,
                      "_row": row})

    def complete(self, reply: Reply) -> None:
        """Called when a current reply is delivered: finished exposures enter the log."""
        if reply.device not in self.telescopes:
            if self.spec is not None and reply.ok:
                self.spec.complete(reply)
            return
        row = reply.result.pop("_row", None)
        if row is not None:
            self._obs_rows.append(row)
            self.telescopes[reply.device].exposure = None
            self.finished.append((row[5], self.config.camera.bands.index(row[4]),
                                  0.5 * (row[8] + row[9]), row[14]))

    def take_finished(self) -> list[tuple[int, int, float, float]]:
        """Exposures finished since the last call: (field, band index, t_mid, m5)."""
        out, self.finished = self.finished, []
        return out

    def _geometry(self, tel: Telescope, field_id: int, t_start: float, t_end: float,
                  seconds: float):
        key = (field_id, t_start, tel.site)
        geo = self._geometry_cache.get(key)
        if geo is None:
            sky, eph = self.sky, self.sky.night.sites[tel.site]
            t_mid = 0.5 * (t_start + t_end)
            idx = np.array([field_id])
            # Geometry columns are at mid-exposure (the brain enforces limits at both ends).
            alt = float(sky.alt_deg(tel.site, t_mid, idx)[0])
            moon_sep = float(sky.moon_sep_deg(tel.site, t_mid, idx)[0])
            sun_alt = float(eph.sun_alt(t_mid))
            w = self.weather[tel.site].at(t_start)
            geo = (alt, moon_sep, sun_alt, float(eph.moon_alt(t_mid)),
                   float(eph.moon_phase_angle(t_mid)), w["seeing_arcsec"], w["cloud"])
            if len(self._geometry_cache) > 4096:
                self._geometry_cache.clear()
            self._geometry_cache[key] = geo
        alt, moon_sep, sun_alt, moon_alt, phase, seeing, cloud = geo
        am = float(airmass(alt))
        lim = float(limiting_mag(self.config.depth, tel.band, alt, moon_alt, moon_sep, phase,
                                 seeing, cloud, seconds))
        return alt, am, moon_sep, sun_alt, lim, seeing
