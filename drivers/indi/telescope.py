"""The SBP1 telescope device of the INDI bridge: an INDI mount, camera, dome (and
optionally a filter wheel) served to the brain as one telescope (docs/indi.md).

Coordinates: ICRS on the brain's side, INDI's epoch of date (``EQUATORIAL_EOD_COORD``) on
the mount's; the conversions (``drivers/coords.py``) happen here, at world time: a
slew's ICRS target when it is sent, the mount's position whenever it is reported."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from drivers.coords import eod_to_icrs, icrs_to_eod
from drivers.device import CommandError, Device, Pending, PlanRunner
from drivers.indi.client import (
    BUSY,
    CCD_INTERFACE,
    DOME_INTERFACE,
    FILTER_INTERFACE,
    OK,
    TELESCOPE_INTERFACE,
    IndiClient,
    IndiError,
    Vector,
)
from drivers.indi.frames import (
    FRAME_TIMEOUT_S,
    PRIMARY_CHIP,
    FrameMeta,
    FrameReducer,
    IndiFrames,
)
from drivers.indi.steps import Step
from drivers.sky import alt_az_deg, lst_deg, nominal_quality, ra_diff_h, slew_eta

log = logging.getLogger("sitian.indi")


class IndiTelescope(PlanRunner, Device):
    """INDI mount + CCD (+ dome, + filter wheel) as one SBP1 telescope.

    Device names default to auto-detection from ``DRIVER_INFO.DRIVER_INTERFACE``
    (``"auto"``); ``dome=None`` means no dome. ``filter_slot``: the wheel slot to set
    before each exposure (``wheel`` names the wheel's device, default: a filter-wheel
    device, else the camera). ``lat_deg``/``lon_deg`` (east) are sent to the mount's
    ``GEOGRAPHIC_COORD`` when given, otherwise read from it.

    ``reducer`` (``--photometry``, drivers/framephot.py): the camera is asked for its
    primary chip's frames (``enableBLOB Also`` for ``CCD1``) and each exposure's frame
    goes to the reducer (drivers/indi/frames.py); ``pixel_scale_arcsec`` and
    ``rotation_deg`` make a WCS from the mount's pointing for a frame that has none.
    Without it no frames are asked for (``enableBLOB Never``).
    """

    kind = "telescope"
    capabilities = ("slew", "expose", "abort", "park", "open", "close", "status")

    def __init__(self, device_id: str, site: str, group: int, band: str,
                 client: IndiClient, mount: str = "auto", ccd: str = "auto",
                 dome: str | None = "auto", wheel: str | None = None,
                 filter_slot: int | None = None, limiting_mag: float = 20.5,
                 ref_seconds: float = 60.0, seeing_arcsec: float = 1.5,
                 extinction: float = 0.2, lat_deg: float | None = None,
                 lon_deg: float | None = None, elev_m: float | None = None,
                 slew_timeout_s: float = 300.0, dome_timeout_s: float = 300.0,
                 readout_timeout_s: float = 120.0, reducer: FrameReducer | None = None,
                 pixel_scale_arcsec: float | None = None, rotation_deg: float = 0.0,
                 frame_timeout_s: float = FRAME_TIMEOUT_S):
        super().__init__(device_id, site, group, band)
        self.client = client
        self.mount, self.ccd, self.dome, self.wheel = mount, ccd, dome, wheel
        self.filter_slot = filter_slot
        self.limiting_mag, self.ref_seconds = float(limiting_mag), float(ref_seconds)
        self.seeing_arcsec, self.extinction = float(seeing_arcsec), float(extinction)
        self.site_lat, self.site_lon, self.site_elev = lat_deg, lon_deg, elev_m
        self.slew_timeout_s, self.dome_timeout_s = slew_timeout_s, dome_timeout_s
        self.readout_timeout_s = readout_timeout_s
        self._last_connect: dict[str, float] = {}
        self._names: list[str] = []
        self.frames = (IndiFrames(client, reducer, pixel_scale_arcsec, rotation_deg,
                                  frame_timeout_s) if reducer is not None else None)
        client.on_define.append(self._on_define)
        client.on_connect.append(self._on_connect)

    # Start-up --------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect to the server, find and connect the devices, push the site; raises
        :class:`IndiError` with what is missing."""
        t_end = time.monotonic() + timeout_s
        self.client.start(wait_s=timeout_s)
        self._resolve_names(t_end)
        for dev in self._names:
            self._connect(dev)
        for dev in self._names:
            ok = self.client.wait(lambda d=dev: self._is_connected(d),
                                  max(0.1, t_end - time.monotonic()))
            if not ok:
                why = self.client.last_message(dev) or "CONNECTION never became Ok"
                raise IndiError(f"INDI device {dev!r} did not connect: {why}")
        need = [(self.mount, "EQUATORIAL_EOD_COORD"), (self.mount, "TELESCOPE_PARK"),
                (self.ccd, "CCD_EXPOSURE")]
        if self.dome:
            need.append((self.dome, "DOME_SHUTTER"))
        if self.filter_slot is not None:
            need.append((self.wheel, "FILTER_SLOT"))
        for dev, prop in need:
            if not self.client.wait(lambda d=dev, p=prop: (d, p) in self.client.props,
                                    max(0.1, t_end - time.monotonic())):
                raise IndiError(f"INDI device {dev!r} has no property {prop}")
        self._push_site()

    def _resolve_names(self, t_end: float) -> None:
        want = {"mount": (self.mount, TELESCOPE_INTERFACE), "ccd": (self.ccd, CCD_INTERFACE)}
        if self.dome:
            want["dome"] = (self.dome, DOME_INTERFACE)

        def found() -> bool:
            devs = self.client.devices()
            for name, bit in want.values():
                if name == "auto":
                    if not any(b & bit for b in devs.values()):
                        return False
                elif not any(k[0] == name and k[1] == "CONNECTION" for k in self.client.props):
                    return False
            return True

        if not self.client.wait(found, max(0.1, t_end - time.monotonic())):
            seen = sorted(self.client.devices())
            missing = [f"{role} {name!r}" for role, (name, _) in want.items()]
            raise IndiError(f"INDI server {self.client.host}:{self.client.port} lacks "
                            f"{', '.join(missing)} (devices seen: {seen or 'none'})")
        time.sleep(0.2)  # let the rest of the first getProperties answer arrive
        devs = self.client.devices()
        for role, (name, bit) in want.items():
            if name == "auto":
                setattr(self, role, sorted(d for d, b in devs.items() if b & bit)[0])
        if self.filter_slot is not None and self.wheel in (None, "auto"):
            pure = sorted(d for d, b in devs.items() if b & FILTER_INTERFACE
                          and not b & CCD_INTERFACE)
            self.wheel = pure[0] if pure else self.ccd
        self._names = list(dict.fromkeys(
            d for d in (self.mount, self.ccd, self.dome,
                        self.wheel if self.filter_slot is not None else None) if d))
        log.info("INDI devices: mount %r, camera %r, dome %r, wheel %r", self.mount, self.ccd,
                 self.dome, self.wheel if self.filter_slot is not None else None)

    def _is_connected(self, dev: str) -> bool:  # called under the client's lock
        vec = self.client.props.get((dev, "CONNECTION"))
        return vec is not None and vec.values.get("CONNECT") is True and vec.state == OK

    def _connect(self, dev: str) -> None:
        now = time.monotonic()
        if now - self._last_connect.get(dev, -1e9) < 5.0:
            return
        self._last_connect[dev] = now
        try:
            self.client.new_switch(dev, "CONNECTION", {"CONNECT": True, "DISCONNECT": False})
            if dev == self.ccd:  # frames over this link only for --photometry
                self._enable_blobs()
        except IndiError as exc:
            log.warning("cannot connect %s: %s", dev, exc)

    def _on_define(self, vec: Vector) -> None:
        # A (re)defined CONNECTION that is off: the driver or server restarted.
        if (vec.name == "CONNECTION" and vec.device in self._names
                and vec.values.get("CONNECT") is not True):
            self._connect(vec.device)
        if vec.name == "GEOGRAPHIC_COORD" and vec.device == self.mount:
            self._push_site()

    def _on_connect(self) -> None:
        self._last_connect.clear()
        if self.ccd not in (None, "auto"):
            self._enable_blobs()

    def _enable_blobs(self) -> None:
        """No images on this link, except with --photometry the primary chip's frames
        (not the guide chip's, nor a video stream on another vector)."""
        self.client.enable_blob(self.ccd, "Never")
        if self.frames is not None:
            self.client.enable_blob(self.ccd, "Also", PRIMARY_CHIP)

    def _push_site(self) -> None:
        if self.site_lat is None or self.site_lon is None:
            return
        vec = self.client.get(self.mount, "GEOGRAPHIC_COORD")
        if vec is None:
            return
        want = {"LAT": float(self.site_lat), "LONG": float(self.site_lon) % 360.0}
        if self.site_elev is not None:
            want["ELEV"] = float(self.site_elev)
        if all(abs(vec.values.get(k, math.nan) - v) < 1e-6 for k, v in want.items()):
            return
        try:
            self.client.new_number(self.mount, "GEOGRAPHIC_COORD",
                                   {k: want.get(k, v) for k, v in vec.values.items()})
        except IndiError as exc:
            log.warning("cannot set the mount's site: %s", exc)

    # State -----------------------------------------------------------------------------
    def _site(self) -> tuple[float, float]:
        lat = self.client.value(self.mount, "GEOGRAPHIC_COORD", "LAT")
        lon = self.client.value(self.mount, "GEOGRAPHIC_COORD", "LONG")
        if self.site_lat is not None and self.site_lon is not None:
            return float(self.site_lat), float(self.site_lon)
        return float(lat if lat is not None else 0.0), float(lon if lon is not None else 0.0)

    def _pointing(self, now: float) -> dict:
        """Where the mount points at world time ``now``: ICRS ``ra_deg``/``dec_deg``
        (converted from its epoch-of-date ``EQUATORIAL_EOD_COORD``), ``alt_deg``/``az_deg``;
        {} if it reports no position."""
        eq = self.client.get(self.mount, "EQUATORIAL_EOD_COORD")
        if eq is None or not all(math.isfinite(eq.values.get(k, math.nan))
                                 for k in ("RA", "DEC")):
            return {}
        ra_eod, dec_eod = eq.values["RA"] * 15.0 % 360.0, float(eq.values["DEC"])
        ra, dec = eod_to_icrs(ra_eod, dec_eod, now)
        hz = self.client.get(self.mount, "HORIZONTAL_COORD")
        if hz is not None and math.isfinite(hz.values.get("ALT", math.nan)):
            alt, az = float(hz.values["ALT"]), float(hz.values.get("AZ", math.nan)) % 360.0
        else:  # the hour angle is the sidereal time less the right ascension of date
            lat, lon = self._site()
            alt, az = alt_az_deg(ra_eod, dec_eod, lat, lst_deg(now, lon))
        return {"ra_deg": ra, "dec_deg": dec, "alt_deg": alt, "az_deg": az}

    def _shutter_open(self) -> bool | None:
        if not self.dome:
            return None
        vec = self.client.get(self.dome, "DOME_SHUTTER")
        if vec is None:
            return None
        return vec.values.get("SHUTTER_OPEN") is True and vec.state != BUSY

    def _parked(self) -> bool:
        return self.client.value(self.mount, "TELESCOPE_PARK", "PARK") is True

    def state(self, now: float) -> dict:
        out: dict[str, Any] = {"indi": f"{self.client.host}:{self.client.port}"}
        if not self.client.connected:
            return {"state": "fault", **out, "fault": "INDI server not connected"}
        with self.client.cond:
            down = [d for d in self._names if not self._is_connected(d)]
        if down:
            return {"state": "fault", **out, "fault": f"INDI device(s) not connected: {down}"}
        shutter = self._shutter_open()
        busy = self._busy()
        for dev, prop in ((self.mount, "EQUATORIAL_EOD_COORD"), (self.ccd, "CCD_EXPOSURE"),
                          (self.mount, "TELESCOPE_PARK")):
            vec = self.client.get(dev, prop)
            busy = busy or (vec is not None and vec.state == BUSY)
        state = ("closed" if shutter is False else "parked" if self._parked()
                 else "busy" if busy else "idle")
        out.update(self._pointing(now))
        out.update({"state": state, "parked": self._parked()})
        if shutter is not None:
            out["shutter_open"] = shutter
        if self.frames is not None:
            out["photometry"] = self.frames.summary()
        return out

    def events(self, now: float) -> list[tuple[str, dict]]:
        """The ``detections`` of the frames measured since the last call (--photometry)."""
        if self.frames is None:
            return []
        exposing = self._busy("expose")
        return self.frames.events(self.ccd, exposing)

    def close(self) -> None:
        """Stop the photometry worker (the client is the caller's to close)."""
        if self.frames is not None:
            self.frames.close()

    # Commands --------------------------------------------------------------------------
    def _switch_step(self, dev: str, prop: str, element: str, what: str, timeout_s: float,
                     values: dict[str, bool] | None = None) -> Step:
        vals = values or {element: True}
        return Step(self.client, dev, prop, what, timeout_s,
                    lambda: self.client.new_switch(dev, prop, vals),
                    lambda v: v.values.get(element) is True)

    def _has(self, dev: str | None, prop: str) -> bool:
        return bool(dev) and self.client.get(dev, prop) is not None

    def _unpark_mount_step(self) -> list[Step]:
        if not self._has(self.mount, "TELESCOPE_PARK") or not self._parked():
            return []
        return [self._switch_step(self.mount, "TELESCOPE_PARK", "UNPARK", "unpark", 60.0,
                                  {"UNPARK": True, "PARK": False})]

    def _fire(self, dev: str | None, prop: str, values: dict[str, bool]) -> None:
        """Send a switch and do not wait (aborts)."""
        if self._has(dev, prop):
            try:
                self.client.new_switch(dev, prop, values)
            except IndiError as exc:
                log.warning("%s.%s: %s", dev, prop, exc)

    def _run(self, name: str, steps: list[Step], finish: Callable[[float], dict],
             eta: float, now: float, preempt: bool = False) -> dict | Pending:
        if not self.client.connected:
            raise CommandError("device_fault", f"INDI server {self.client.host}:"
                               f"{self.client.port} not connected")
        return super()._run(name, steps, finish, eta, now, preempt)

    def _check_connected(self) -> None:
        with self.client.cond:
            down = [d for d in self._names if not self._is_connected(d)]
        if not self.client.connected or down:
            raise CommandError("device_fault", "INDI server or device(s) not connected: "
                               f"{down or self.client.last_error}")

    def cmd_open(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        steps: list[Step] = []
        if self.dome:
            if self.client.value(self.dome, "DOME_PARK", "PARK") is True:
                steps.append(self._switch_step(self.dome, "DOME_PARK", "UNPARK", "open",
                                               self.dome_timeout_s,
                                               {"UNPARK": True, "PARK": False}))
            steps.append(self._switch_step(self.dome, "DOME_SHUTTER", "SHUTTER_OPEN", "open",
                                           self.dome_timeout_s,
                                           {"SHUTTER_OPEN": True, "SHUTTER_CLOSE": False}))
        steps += self._unpark_mount_step()
        return self._run("open", steps, lambda t: {}, now + self.dome_timeout_s, now)

    def cmd_close(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        self._fire(self.ccd, "CCD_ABORT_EXPOSURE", {"ABORT": True})
        self._fire(self.mount, "TELESCOPE_ABORT_MOTION", {"ABORT": True})
        if not self.dome:
            return self.cmd_park(args, now)
        steps = [self._switch_step(self.dome, "DOME_SHUTTER", "SHUTTER_CLOSE", "close",
                                   self.dome_timeout_s,
                                   {"SHUTTER_CLOSE": True, "SHUTTER_OPEN": False})]
        return self._run("close", steps, lambda t: {}, now + self.dome_timeout_s, now,
                         preempt=True)

    def cmd_park(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        self._fire(self.ccd, "CCD_ABORT_EXPOSURE", {"ABORT": True})
        steps = [self._switch_step(self.mount, "TELESCOPE_PARK", "PARK", "park",
                                   self.slew_timeout_s, {"PARK": True, "UNPARK": False})]
        return self._run("park", steps, lambda t: {}, now + self.slew_timeout_s, now,
                         preempt=True)

    def cmd_abort(self, args: dict, now: float) -> dict:
        self._fire(self.mount, "TELESCOPE_ABORT_MOTION", {"ABORT": True})
        self._fire(self.ccd, "CCD_ABORT_EXPOSURE", {"ABORT": True})
        self._plan = None
        return {}

    def failsafe(self, now: float) -> None:
        """No word from the brain: abort, park and close, without waiting for any of it."""
        self._plan = None
        self._fire(self.mount, "TELESCOPE_ABORT_MOTION", {"ABORT": True})
        self._fire(self.ccd, "CCD_ABORT_EXPOSURE", {"ABORT": True})
        self._fire(self.mount, "TELESCOPE_PARK", {"PARK": True, "UNPARK": False})
        if self.dome:
            self._fire(self.dome, "DOME_SHUTTER", {"SHUTTER_CLOSE": True, "SHUTTER_OPEN": False})

    def cmd_slew(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        if self._shutter_open() is False:
            raise CommandError("device_fault", "closed: the dome shutter is not open")
        ra, dec = float(args["ra_deg"]), float(args["dec_deg"])  # ICRS
        # The mount takes its epoch of date: the target converted at the command's time.
        ra_eod, dec_eod = icrs_to_eod(ra, dec, now)
        ra_eod_h = ra_eod / 15.0
        tol_deg = 1.0 / 60.0

        def at_target(v: Vector) -> bool:
            return (ra_diff_h(v.values.get("RA", math.nan), ra_eod_h) * 15.0
                    * math.cos(math.radians(dec_eod)) < tol_deg
                    and abs(v.values.get("DEC", math.nan) - dec_eod) < tol_deg)

        steps = self._unpark_mount_step()
        if self._has(self.mount, "ON_COORD_SET"):
            steps.append(self._switch_step(self.mount, "ON_COORD_SET", "TRACK", "slew", 30.0,
                                           {"TRACK": True, "SLEW": False, "SYNC": False}))
        steps.append(Step(self.client, self.mount, "EQUATORIAL_EOD_COORD", "slew",
                          self.slew_timeout_s,
                          lambda: self.client.new_number(self.mount, "EQUATORIAL_EOD_COORD",
                                                         {"RA": ra_eod_h, "DEC": dec_eod}),
                          at_target, skip_if_done=False))

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
        steps: list[Step] = []
        if self.filter_slot is not None:
            slot = float(self.filter_slot)
            steps.append(Step(self.client, self.wheel, "FILTER_SLOT", "filter", 120.0,
                              lambda: self.client.new_number(self.wheel, "FILTER_SLOT",
                                                             {"FILTER_SLOT_VALUE": slot}),
                              lambda v: abs(v.values.get("FILTER_SLOT_VALUE", -1) - slot)
                              < 0.5))
        expo = Step(self.client, self.ccd, "CCD_EXPOSURE", "expose",
                    seconds + self.readout_timeout_s,
                    lambda: self.client.new_number(self.ccd, "CCD_EXPOSURE",
                                                   {"CCD_EXPOSURE_VALUE": seconds}),
                    lambda v: False, need_busy=True, skip_if_done=False)
        steps.append(expo)
        sent = {"t": now}
        clock_offset = now - time.monotonic()

        def finish(t: float) -> dict:
            # The shutter opened when the camera said Busy (or when asked, if it never did).
            t_start = (expo.t_busy if expo.t_busy is not None else expo.t0) + clock_offset
            t_start = max(sent["t"], t_start)
            p = self._pointing(t_start + seconds / 2)
            res = {"obs_id": args["obs_id"], "field_id": int(args["field_id"]),
                   "t_start": t_start, "t_end": t_start + seconds,
                   **nominal_quality(p["alt_deg"] if p else None, seconds,
                                     self.limiting_mag, self.ref_seconds,
                                     self.seeing_arcsec, self.extinction)}
            if self.frames is not None:  # the frame is paired and measured later
                self.frames.expect(FrameMeta(res["obs_id"], res["field_id"], self.band,
                                             t_start + seconds / 2, res["limiting_mag"]),
                                   self.ccd, expo.t0, p)
            return res

        return self._run("expose", steps, finish, now + seconds + 30.0, now)
