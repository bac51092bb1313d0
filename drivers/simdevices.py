"""Simulator-backed devices: the MiniSiTian world served over SBP1 (``brain sim-drivers``).

The same :class:`simulator.world.World`, spectrographs, weather and photometry as the fast
shell, behind the device base classes, on a world clock (``--start``/``--speed``).
Telescopes publish a ``detections`` event for every finished exposure (the photometry
pipeline of the simulator; with ``frames``, rendered frames measured by the real pipeline
or the catalogue cropped to their footprint, drivers/simframes.py). As a documented
simulator-only extension each source carries ``truth`` (the simulated source's index, -1
for bogus) so a wire-mode run can report the same truth-based statistics as the fast
shell; the brain never decides on it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date as Date

import numpy as np

from drivers.device import CommandError, Device, Pending
from observatory.ephemeris import night_date
from observatory.visibility import NightCache
from simulator.photometry import ExposureBatch, Photometry
from simulator.spectroscopy import Spectrographs
from simulator.world import Reply, World

SOURCES_PER_EVENT = 6000  # keeps a detections message well under the 1 MiB limit
WEATHER_EVERY_S = 60.0  # world seconds between a station's reports when nothing changes


class SimArray:
    """The world behind every simulated device, advanced night by night."""

    def __init__(self, config, env, cache: NightCache, frames=None):
        self.config, self.env, self.cache = config, env, cache
        self.world = World(config)
        self.photometry = None
        if env.population is not None:
            self.photometry = Photometry(env.population, cache.grid, env.seed,
                                         config.sky.bogus_per_exposure)
            if config.spectrographs:
                self.world.attach_spectrographs(Spectrographs(config, env.population,
                                                              env.seed))
        self._date: str | None = None
        self._queued: list[tuple[_SimDevice, tuple]] = []
        # Photometry runs on a worker thread, as a camera pipeline runs beside its
        # controller: one process serves 60 devices, and a batch that held the loop
        # would delay the other telescopes' outcomes (speed x its length, in a rehearsal).
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="photometry")
        self._running: Future | None = None
        # drivers/simframes.py: FramesPath or FootprintPath, made with this array
        self.frames = frames(self) if frames is not None else None

    def ensure_night(self, now: float) -> None:
        date = night_date(self.config, now)
        if date == self._date:
            return
        self._date = date
        _night, sky = self.cache.get(date)
        k = self.env_night_index(date)
        weather = {s.id: self.env.weather[(k, s.id)] for s in self.config.sites}
        self.world.begin_night(sky, weather)

    def env_night_index(self, date: str) -> int:
        k = (Date.fromisoformat(date) - Date.fromisoformat(self.env.start)).days
        return int(np.clip(k, 0, self.env.nights - 1))

    def weather_at(self, site: str, now: float) -> dict:
        return self._series(site, now).at(now)

    def weather_change_after(self, site: str, now: float) -> float:
        """World time of the site's next weather sample after ``now`` (inf: none)."""
        t = self._series(site, now).t_unix
        k = int(np.searchsorted(t, now, side="right"))
        return float(t[k]) if k < len(t) else np.inf

    def _series(self, site: str, now: float):
        k = self.env_night_index(night_date(self.config, now))
        return self.env.weather[(k, site)]

    def devices(self) -> list[Device]:
        out: list[Device] = []
        for g in self.config.groups:
            for band in self.config.camera.bands:
                out.append(SimTelescope(self, g.telescope(band), g.site, g.number, band))
        for s in self.config.sites:
            out.append(SimWeather(self, f"{s.id}.wx", s.id))
        for sp in self.config.spectrographs:
            out.append(SimSpectrograph(self, f"{sp.site}.spec", sp.site))
        return out

    def queue(self, device: _SimDevice, row: tuple) -> None:
        """A finished exposure: its detections are made in the next :meth:`flush`."""
        extra = self.frames.conditions(self, row) if self.frames is not None else None
        self._queued.append((device, row, extra))

    @property
    def waiting(self) -> int:
        """Finished exposures whose detections are not being made yet."""
        return len(self._queued)

    def flush(self) -> None:
        """Publish the photometry of the last batch once it is ready, and start the next
        batch (every exposure finished since) on the worker thread."""
        if self._running is not None and self._running.done():
            fut, self._running = self._running, None
            self._publish(*fut.result())
        if self._running is None and self._queued:
            n = self.frames.batch_max if self.frames is not None else None
            n = len(self._queued) if n is None else n
            queued, self._queued = self._queued[:n], self._queued[n:]
            self._running = self._pool.submit(self._detect, queued)

    def drain(self) -> None:
        """Wait for the batch in progress and publish it (tests, shutdown)."""
        while self._running is not None or self._queued:
            if self._running is not None:
                self._running.result()
            self.flush()

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()

    def _detect(self, queued):
        """The simulator's pipeline on a batch of exposures (no shared state touched):
        (queued, detections, limiting magnitudes or None: the rows' m5)."""
        if self.frames is not None:
            return (queued, *self.frames.detect(self, queued))
        return queued, self.catalogue([q[1] for q in queued]), None

    def catalogue(self, rows: list[tuple]):
        """The catalogue photometry of a batch of exposure rows (None: no sky)."""
        if self.photometry is None:
            return None
        bands = self.config.camera.bands
        return self.photometry.detect(ExposureBatch(
            np.array([int(r[5]) for r in rows]), np.array([bands.index(r[4]) for r in rows]),
            np.array([0.5 * (r[8] + r[9]) for r in rows]), np.array([r[14] for r in rows]),
            np.arange(len(rows))), zlib.crc32(rows[0][0].encode()))

    def _publish(self, queued, det, limits=None) -> None:
        """Each exposure's detections events into its telescope's outbox."""
        if det is not None:
            order = np.argsort(det.exposure, kind="stable")
            bounds = np.searchsorted(det.exposure[order], np.arange(len(queued) + 1))
        for k, (device, row, _extra) in enumerate(queued):
            sources: list[dict] = []
            if det is not None:
                sel = order[bounds[k]:bounds[k + 1]]
                # ref_mag: the reference's magnitude there, null where it holds nothing.
                ref = [r if r < 99 else None for r in det.ref_mag[sel].tolist()]
                sources = [{"ra_deg": a, "dec_deg": d, "mag": m, "mag_err": e, "truth": tr,
                            "ref_mag": rf}
                           for a, d, m, e, tr, rf in zip(det.ra_deg[sel].tolist(),
                                                         det.dec_deg[sel].tolist(),
                                                         det.mag[sel].tolist(),
                                                         det.mag_err[sel].tolist(),
                                                         det.truth[sel].tolist(), ref,
                                                         strict=True)]
            base = {"obs_id": row[0], "field_id": int(row[5]), "band": row[4],
                    "t_mid": 0.5 * (row[8] + row[9]),
                    "limiting_mag": float(row[14] if limits is None else limits[k])}
            chunks = [sources[i:i + SOURCES_PER_EVENT]
                      for i in range(0, max(len(sources), 1), SOURCES_PER_EVENT)]
            device.outbox += [("detections", {**base, "sources": c, "part": j,
                                              "parts": len(chunks)})
                              for j, c in enumerate(chunks)]


class _SimDevice(Device):
    def __init__(self, array: SimArray, device_id: str, site: str, group=None, band=None):
        super().__init__(device_id, site, group, band)
        self.array = array
        self.outbox: list[tuple[str, dict]] = []

    def events(self, now: float) -> Iterable[tuple[str, dict]]:
        self.array.flush()
        out, self.outbox = self.outbox, []
        return out

    def handler(self, name: str):
        """Every command goes to the world, as in the fast shell."""
        return lambda args, now: self._run(name, args, now)

    def _run(self, name: str, args: dict, now: float, on_done=None):
        self.array.ensure_night(now)
        world = self.array.world
        r: Reply = world.execute(self.id, name, args, "", now)
        if not r.ok:
            raise CommandError(r.code or "device_fault", r.message or name)

        def finish() -> dict:
            row = r.result.get("_row")
            world.complete(r)
            if on_done is not None:
                on_done(row)
            return {k: v for k, v in r.result.items() if not k.startswith("_")}

        if r.t <= now:
            return finish()

        def poll(t: float):
            if not world.is_current(r):
                raise CommandError("aborted", f"{name} cut short")
            return finish() if t >= r.t else None

        return Pending(r.t, poll)


class SimTelescope(_SimDevice):
    kind = "telescope"
    capabilities = ("slew", "expose", "abort", "park", "open", "close", "status")

    def state(self, now: float) -> dict:
        tel = self.array.world.telescopes[self.id]
        state = ("closed" if not tel.is_open else "parked" if tel.ra_deg is None
                 else "busy" if now < tel.busy_until else "idle")
        return {"state": state, "ra_deg": tel.ra_deg, "dec_deg": tel.dec_deg}

    def handler(self, name: str):
        if name == "expose":
            return self.cmd_expose
        return super().handler(name)

    def cmd_expose(self, args, now):
        def detect(row) -> None:
            self.array.world.take_finished()  # the fast shell's queue: unused here
            if row is not None:
                self.array.queue(self, row)

        return self._run("expose", args, now, on_done=detect)


class SimSpectrograph(_SimDevice):
    kind = "spectrograph"
    capabilities = ("spectrum", "abort", "open", "close", "status")

    def state(self, now: float) -> dict:
        tel = self.array.world.spec.units[self.id]
        state = ("closed" if not tel.is_open else "busy" if now < tel.busy_until else "idle")
        return {"state": state, "ra_deg": tel.ra_deg, "dec_deg": tel.dec_deg}

    def failsafe(self, now: float) -> None:
        for name in ("abort", "close"):
            try:
                self._run(name, {}, now)
            except CommandError:
                pass


class SimWeather(_SimDevice):
    kind = "weather"
    capabilities = ("status",)

    def __init__(self, array, device_id, site):
        super().__init__(array, device_id, site)
        self._next = -np.inf

    def state(self, now: float) -> dict:
        return {"state": "idle", **self.array.weather_at(self.site, now)}

    def events(self, now: float):
        """A report as soon as the weather changes (the simulated series changes only
        at its samples), and every WEATHER_EVERY_S when it does not."""
        # (world time may also step back: a rehearsal's brain restarting earlier)
        if now >= self._next or now < self._next - 2 * WEATHER_EVERY_S:
            self._next = min(now + WEATHER_EVERY_S,
                             self.array.weather_change_after(self.site, now))
            return [("weather", self.array.weather_at(self.site, now))]
        return ()
