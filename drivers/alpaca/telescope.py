"""The SBP1 telescope device of the ASCOM Alpaca bridge: an Alpaca telescope (mount),
camera, dome (and optionally a filter wheel) served to the brain as one telescope
(docs/alpaca.md).

Coordinates: ICRS on the brain's side; on the mount's, the system its ``EquatorialSystem``
names (or ``--equatorial-system``): ``equTopocentric`` is the apparent place of date
("JNow", astropy's TETE, as INDI's), ``equJ2000`` ICRS as it is (``drivers/coords.py``).
The conversions happen here, at world time: a slew's ICRS target when it is sent, the
mount's position whenever it is reported."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from drivers.alpaca.client import ASCOM_ERRORS, NETWORK_ERRORS, AlpacaClient, AlpacaError
from drivers.alpaca.client import describe as _describe
from drivers.alpaca.frames import AlpacaFrames, Exposure
from drivers.alpaca.steps import Step
from drivers.coords import SYSTEMS, icrs_to_eod, icrs_to_mount, mount_to_icrs
from drivers.device import CommandError, Device, Pending, PlanRunner
from drivers.framephot import FrameMeta
from drivers.sky import alt_az_deg, lst_deg, nominal_quality, ra_diff_h, slew_eta

log = logging.getLogger("sitian.alpaca")

# ASCOM enumerations (ShutterState, CameraStates, EquatorialCoordinateType)
SHUTTER_OPEN, SHUTTER_CLOSED, SHUTTER_ERROR = 0, 1, 4
CAM_IDLE, CAM_ERROR = 0, 5
CAM_BUSY = (1, 2, 3, 4)  # waiting, exposing, reading, downloading
EQUATORIAL_SYSTEMS = {1: "jnow", 2: "j2000", 3: "j2050", 4: "b1950"}
POLLED = {"telescope": ("RightAscension", "Declination", "Altitude", "Azimuth", "AtPark",
                        "Slewing", "Tracking"),
          "camera": ("CameraState", "ImageReady"), "dome": ("ShutterStatus",),
          "filterwheel": ("Position",)}
GRACE_S = 0.5


def _try(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None where the driver answers with an ASCOM error."""
    try:
        return fn()
    except ASCOM_ERRORS:
        return None


def parse_ascom_time(text: Any) -> float | None:
    """An ASCOM UTC time string (``CCYY-MM-DDThh:mm:ss[.sss]``) as Unix seconds."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


class AlpacaTelescope(PlanRunner, Device):
    """Alpaca telescope + camera (+ dome, + filter wheel) as one SBP1 telescope.

    ``telescope``, ``camera``, ``dome``, ``filterwheel``: device numbers on the server
    (``dome=None``: no dome; ``filterwheel`` is needed for ``filter_slot``, the wheel
    position set before each exposure). ``equatorial_system``: ``"auto"`` (the mount's
    ``EquatorialSystem``) or one of ``drivers.coords.SYSTEMS``. ``lat_deg``/``lon_deg``
    (east)/``elev_m`` are sent to the mount's ``SiteLatitude``/``SiteLongitude``/
    ``SiteElevation`` when given. ``frames`` (``--photometry``): each exposure's frame
    downloaded and measured, its ``detections`` sent as this device's events."""

    kind = "telescope"
    capabilities = ("slew", "expose", "abort", "park", "open", "close", "status")

    def __init__(self, device_id: str, site: str, group: int, band: str,
                 client: AlpacaClient, telescope: int = 0, camera: int = 0,
                 dome: int | None = 0, filterwheel: int | None = None,
                 filter_slot: int | None = None, equatorial_system: str = "auto",
                 limiting_mag: float = 20.5, ref_seconds: float = 60.0,
                 seeing_arcsec: float = 1.5, extinction: float = 0.2,
                 lat_deg: float | None = None, lon_deg: float | None = None,
                 elev_m: float | None = None, slew_timeout_s: float = 300.0,
                 dome_timeout_s: float = 300.0, readout_timeout_s: float = 120.0,
                 frames: AlpacaFrames | None = None):
        super().__init__(device_id, site, group, band)
        if filter_slot is not None and filterwheel is None:
            raise ValueError("--filter-slot needs a filter wheel (--filterwheel N)")
        if equatorial_system not in ("auto", *SYSTEMS):
            raise ValueError(f"equatorial system {equatorial_system!r}: auto or one of "
                             f"{', '.join(SYSTEMS)}")
        self.client = client
        self.numbers = {"telescope": telescope, "camera": camera, "dome": dome,
                        "filterwheel": filterwheel}
        for role, number in self.numbers.items():
            if number is not None:
                client.add(role, number, POLLED[role])
        self.has_dome, self.filter_slot = dome is not None, filter_slot
        self.system = equatorial_system
        self.limiting_mag, self.ref_seconds = float(limiting_mag), float(ref_seconds)
        self.seeing_arcsec, self.extinction = float(seeing_arcsec), float(extinction)
        self.site_lat, self.site_lon, self.site_elev = lat_deg, lon_deg, elev_m
        self.slew_timeout_s, self.dome_timeout_s = slew_timeout_s, dome_timeout_s
        self.readout_timeout_s = readout_timeout_s
        self.can_set_tracking = True
        self.frames = frames

    # Start-up --------------------------------------------------------------------------
    def _ask(self, what: str, fn: Callable[[], Any], timeout_s: float = 15.0) -> Any:
        """Run ``fn`` on the client's worker and wait for it (start-up only)."""
        try:
            return self.client.call(what, fn).result(timeout=timeout_s)
        except TimeoutError:
            raise AlpacaError(f"{what}: no answer from {self.client.address}") from None

    def start(self, timeout_s: float = 30.0) -> None:
        """Check and connect the devices, learn the mount's equatorial system and push
        the site; raises :class:`AlpacaError` naming what is wrong."""
        self.client.start(wait_s=timeout_s)
        tel = self.client.device("telescope")
        if self.system == "auto":
            try:
                code = int(self._ask("EquatorialSystem", lambda: tel.EquatorialSystem))
            except (*ASCOM_ERRORS, *NETWORK_ERRORS) as exc:
                raise AlpacaError(f"the mount does not say its EquatorialSystem "
                                  f"({_describe(exc)}): give --equatorial-system") from None
            if code not in EQUATORIAL_SYSTEMS:
                raise AlpacaError(f"the mount's EquatorialSystem is {code} (other or "
                                  "unknown): give --equatorial-system "
                                  f"{'|'.join(SYSTEMS)}")
            self.system = EQUATORIAL_SYSTEMS[code]
        self.can_set_tracking = bool(self._ask("CanSetTracking",
                                               lambda: _try(lambda: tel.CanSetTracking)))
        if self.site_lat is not None and self.site_lon is not None:
            lon = (float(self.site_lon) + 180.0) % 360.0 - 180.0  # ASCOM: -180..180 east

            def push() -> None:
                tel.SiteLatitude, tel.SiteLongitude = float(self.site_lat), lon
                if self.site_elev is not None:
                    tel.SiteElevation = float(self.site_elev)

            try:
                self._ask("site", push)
            except ASCOM_ERRORS as exc:
                log.warning("cannot set the mount's site: %s", _describe(exc))
        log.info("Alpaca mount in %s coordinates; devices %s", self.system, self.numbers)
        if self.frames is not None:
            self.frames.start(self._ask)

    def close(self) -> None:
        """Stop the photometry worker (if any); the client is closed by its owner."""
        if self.frames is not None:
            self.frames.close()

    def events(self, now: float):
        return self.frames.events() if self.frames is not None else ()

    # State -----------------------------------------------------------------------------
    def _get(self, role: str, prop: str):
        return self.client.get(role, prop)

    def _site(self) -> tuple[float, float]:
        return float(self.site_lat or 0.0), float(self.site_lon or 0.0)

    def _pointing(self, now: float) -> dict:
        """Where the mount points at world time ``now``: ICRS ``ra_deg``/``dec_deg``,
        ``alt_deg``/``az_deg``; {} if it reports no position."""
        ra_h, dec = self._get("telescope", "RightAscension"), self._get("telescope",
                                                                        "Declination")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (ra_h, dec)):
            return {}
        ra, dec_icrs = mount_to_icrs(float(ra_h) * 15.0, float(dec), now, self.system)
        alt, az = self._get("telescope", "Altitude"), self._get("telescope", "Azimuth")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (alt, az)):
            ra_eod, dec_eod = (float(ra_h) * 15.0, float(dec)) if self.system == "jnow" \
                else icrs_to_eod(ra, dec_icrs, now)
            lat, lon = self._site()
            alt, az = alt_az_deg(ra_eod, dec_eod, lat, lst_deg(now, lon))
        return {"ra_deg": ra, "dec_deg": dec_icrs, "alt_deg": float(alt),
                "az_deg": float(az) % 360.0}

    def _shutter(self) -> int | None:
        s = self._get("dome", "ShutterStatus")
        return None if s is None else int(s)

    def _shutter_open(self) -> bool | None:
        if not self.has_dome:
            return None
        return self._shutter() == SHUTTER_OPEN

    def _parked(self) -> bool:
        return self._get("telescope", "AtPark") is True

    def _slewing(self) -> bool:
        return self._get("telescope", "Slewing") is True

    def _camera(self) -> int | None:
        s = self._get("camera", "CameraState")
        return None if s is None else int(s)

    def state(self, now: float) -> dict:
        out: dict[str, Any] = {"alpaca": self.client.address,
                               "equatorial_system": self.system}
        down = self.client.down()
        if down:
            return {"state": "fault", **out, "fault": f"Alpaca device(s) not answering: "
                    f"{'; '.join(down)}"}
        shutter = self._shutter_open()
        busy = (self._busy() or self._slewing()
                or self._camera() in CAM_BUSY)
        state = ("closed" if shutter is False else "parked" if self._parked()
                 else "busy" if busy else "idle")
        out.update(self._pointing(now))
        out.update({"state": state, "parked": self._parked()})
        if shutter is not None:
            out["shutter_open"] = shutter
        return out

    # Commands --------------------------------------------------------------------------
    def _check_connected(self) -> None:
        down = self.client.down()
        if down:
            raise CommandError("device_fault", f"Alpaca device(s) not answering: "
                               f"{'; '.join(down)}")

    def _dev(self, role: str):
        return self.client.device(role)

    def _shutter_step(self, name: str, want: int, timeout_s: float) -> Step:
        dome = self._dev("dome")
        send = dome.OpenShutter if want == SHUTTER_OPEN else dome.CloseShutter
        return Step(self.client, name, timeout_s, send,
                    done=lambda: self._shutter() == want,
                    skip=lambda: self._shutter() == want,
                    fail=lambda: ("the dome shutter reports an error"
                                  if self._shutter() == SHUTTER_ERROR else None))

    def _unpark_steps(self) -> list[Step]:
        if not self._parked():
            return []
        return [Step(self.client, "unpark", 60.0, self._dev("telescope").Unpark,
                     done=lambda: not self._parked(), skip=lambda: not self._parked())]

    def _abort_motion(self) -> None:
        if self._slewing() or self._busy("slew"):
            self.client.fire("AbortSlew", self._dev("telescope").AbortSlew)

    def _abort_exposure(self) -> None:
        if self._camera() in CAM_BUSY:
            self.client.fire("AbortExposure", self._dev("camera").AbortExposure)

    def cmd_open(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        steps: list[Step] = []
        if self.has_dome:
            steps.append(self._shutter_step("open", SHUTTER_OPEN, self.dome_timeout_s))
        steps += self._unpark_steps()
        return self._run("open", steps, lambda t: {}, now + self.dome_timeout_s, now)

    def cmd_close(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        self._abort_exposure()
        self._abort_motion()
        if not self.has_dome:
            return self.cmd_park(args, now)
        steps = [self._shutter_step("close", SHUTTER_CLOSED, self.dome_timeout_s)]
        return self._run("close", steps, lambda t: {}, now + self.dome_timeout_s, now,
                         preempt=True)

    def cmd_park(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        self._abort_exposure()
        steps = [Step(self.client, "park", self.slew_timeout_s, self._dev("telescope").Park,
                      done=lambda: self._parked() and not self._slewing(),
                      skip=self._parked)]
        return self._run("park", steps, lambda t: {}, now + self.slew_timeout_s, now,
                         preempt=True)

    def cmd_abort(self, args: dict, now: float) -> dict:
        self._abort_motion()
        self._abort_exposure()
        self._plan = None
        return {}

    def failsafe(self, now: float) -> None:
        """No word from the brain: abort, park and close, without waiting for any of it."""
        self.cmd_abort({}, now)
        if not self._parked():
            self.client.fire("Park", self._dev("telescope").Park)
        if self.has_dome:
            self.client.fire("CloseShutter", self._dev("dome").CloseShutter)

    def cmd_slew(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        if self._shutter_open() is False:
            raise CommandError("device_fault", "closed: the dome shutter is not open")
        ra, dec = float(args["ra_deg"]), float(args["dec_deg"])  # ICRS
        # The mount takes its own system: the target converted at the command's time.
        ra_m, dec_m = icrs_to_mount(ra, dec, now, self.system)
        ra_h = ra_m / 15.0 if ra_m / 15.0 < 24.0 else 0.0
        tol_deg = 1.0 / 60.0
        tel = self._dev("telescope")

        def off_deg() -> float:
            r, d = self._get("telescope", "RightAscension"), self._get("telescope",
                                                                       "Declination")
            if r is None or d is None:
                return math.inf
            return max(ra_diff_h(float(r), ra_h) * 15.0 * math.cos(math.radians(dec_m)),
                       abs(float(d) - dec_m))

        moved = {"seen": False}

        def stopped_away() -> str | None:
            if self._slewing():
                moved["seen"] = True
            elif moved["seen"] and off_deg() >= tol_deg:
                return f"the mount stopped {off_deg():.3f} deg from the target"
            return None

        steps = self._unpark_steps()
        if self.can_set_tracking:
            steps.append(Step(self.client, "tracking", 30.0,
                              lambda: setattr(tel, "Tracking", True),
                              done=lambda: self._get("telescope", "Tracking") is True,
                              skip=lambda: self._get("telescope", "Tracking") is True))
        steps.append(Step(self.client, "slew", self.slew_timeout_s,
                          lambda: tel.SlewToCoordinatesAsync(ra_h, dec_m),
                          done=lambda: not self._slewing() and off_deg() < tol_deg,
                          fail=stopped_away))

        def finish(t: float) -> dict:
            p = self._pointing(t)
            if not p:
                raise CommandError("device_fault", "slew: the mount reports no position")
            return p

        eta = slew_eta(self._pointing(now), ra, dec, now, self.slew_timeout_s)
        return self._run("slew", steps, finish, eta, now)

    def cmd_expose(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        if self._shutter_open() is False or self._parked():
            raise CommandError("device_fault", "closed or parked")
        seconds = float(args["seconds"])
        cam = self._dev("camera")
        steps: list = []
        if self.frames is not None:  # the camera's one image buffer: the last frame read
            steps.append(self.frames.wait_step())
        if self.filter_slot is not None:
            slot, wheel = int(self.filter_slot), self._dev("filterwheel")
            steps.append(Step(self.client, "filter", 120.0,
                              lambda: setattr(wheel, "Position", slot),
                              done=lambda: self._get("filterwheel", "Position") == slot,
                              skip=lambda: self._get("filterwheel", "Position") == slot))
        seen = {"busy": False}
        samples: list[tuple[int, float, Any, Any]] = []  # the mount polled while exposing

        def exposed() -> bool:
            if self.frames is not None and (not samples or samples[-1][0] != self.client.gen):
                samples.append((self.client.gen, time.monotonic(),
                                self._get("telescope", "RightAscension"),
                                self._get("telescope", "Declination")))
            state = self._camera()
            if state in CAM_BUSY:
                seen["busy"] = True
                return False
            # A camera that went and came back between two polls: the image is ready
            # and the exposure's time has passed.
            return (state == CAM_IDLE and self._get("camera", "ImageReady") is True
                    and (seen["busy"] or time.monotonic() - expo.t0 >= seconds + GRACE_S))

        expo = Step(self.client, "expose", seconds + self.readout_timeout_s,
                    lambda: cam.StartExposure(seconds, True), done=exposed,
                    fail=lambda: ("the camera reports an error (CameraState cameraError)"
                                  if self._camera() == CAM_ERROR else None))
        started = Step(self.client, "expose", 30.0,
                       lambda: _try(lambda: cam.LastExposureStartTime), done=lambda: True)
        steps += [expo, started]
        clock_offset = now - time.monotonic()

        def finish(t: float) -> dict:
            # The camera's own start time when it gives one for this exposure, else when
            # it accepted the request.
            t_start = parse_ascom_time(started.result)
            answered = (expo.t_answered or expo.t0) + clock_offset
            if t_start is None or not now - 2.0 <= t_start <= t:
                t_start = answered
            t_start = max(now, t_start)
            p = self._pointing(t_start + seconds / 2)
            result = {"obs_id": args["obs_id"], "field_id": int(args["field_id"]),
                      "t_start": t_start, "t_end": t_start + seconds,
                      **nominal_quality(p["alt_deg"] if p else None, seconds,
                                        self.limiting_mag, self.ref_seconds,
                                        self.seeing_arcsec, self.extinction)}
            if self.frames is not None:
                self._fetch_frame(result, seconds, samples, clock_offset, p)
            return result

        return self._run("expose", steps, finish, now + seconds + 30.0, now)

    def _fetch_frame(self, result: dict, seconds: float, samples: list, clock_offset: float,
                     p: dict) -> None:
        """Ask for the frame of a finished exposure, placed where the mount pointed at
        mid-exposure (the poll nearest it; else the last)."""
        t_mid = result["t_start"] + seconds / 2
        good = [(abs(t - (t_mid - clock_offset)), r, d) for _g, t, r, d in samples
                if all(isinstance(v, int | float) and math.isfinite(v) for v in (r, d))]
        if good:
            _dt, ra_h, dec = min(good)
            ra, dec = mount_to_icrs(float(ra_h) * 15.0, float(dec), t_mid, self.system)
        elif p:
            ra, dec = p["ra_deg"], p["dec_deg"]
        else:
            log.warning("frame %s not fetched: the mount reports no position",
                        result["obs_id"])
            return
        meta = FrameMeta(result["obs_id"], result["field_id"], self.band, t_mid,
                         float(result["limiting_mag"]))
        self.frames.fetch(Exposure(meta, ra, dec, result["t_start"], seconds))
