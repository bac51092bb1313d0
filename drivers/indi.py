"""INDI bridge: a mount, a camera, a dome (and optionally a filter wheel) on an
``indiserver``, served to the brain as one SBP1 telescope device.

``python -m drivers.indi --device-id xl.g01.g --site xl --group 1 --band g`` connects to
the INDI server (default ``127.0.0.1:7624``) and to the brain's ROUTER, and maps
(docs/indi.md has the whole table):

=========  ================================================================================
``open``   dome ``DOME_PARK: UNPARK`` if parked, ``DOME_SHUTTER: SHUTTER_OPEN``, mount
           ``TELESCOPE_PARK: UNPARK``
``close``  ``CCD_ABORT_EXPOSURE``, ``TELESCOPE_ABORT_MOTION``, ``DOME_SHUTTER: SHUTTER_CLOSE``
           (without a dome: park the mount)
``park``   ``CCD_ABORT_EXPOSURE``, ``TELESCOPE_PARK: PARK``
``slew``   ``TELESCOPE_PARK: UNPARK`` if parked, ``ON_COORD_SET: TRACK``,
           ``EQUATORIAL_EOD_COORD`` (RA in hours, Dec in degrees)
``expose`` ``FILTER_SLOT`` if a slot is configured, ``CCD_EXPOSURE: CCD_EXPOSURE_VALUE``
``abort``  ``TELESCOPE_ABORT_MOTION: ABORT``, ``CCD_ABORT_EXPOSURE: ABORT``
=========  ================================================================================

A step is finished when its property has been ``Busy`` since the request and is ``Ok``
(or ``Idle``) again, or, for a driver that answers at once, when the property is ``Ok``
with the requested values; ``Alert`` fails the command with ``device_fault`` and the
driver's last message. The INDI client below is self-contained (stdlib only): one TCP
socket, a reader thread parsing the XML stream incrementally, a property cache, and
reconnection when the server goes away.
"""

from __future__ import annotations

import argparse
import codecs
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from drivers.clock import WorldClock
from drivers.device import CommandError, Device, Pending

log = logging.getLogger("sitian.indi")

IDLE, OK, BUSY, ALERT = "Idle", "Ok", "Busy", "Alert"
KINDS = ("Number", "Switch", "Text", "Light", "BLOB")
# DRIVER_INFO.DRIVER_INTERFACE bits (INDI::BaseDevice::DRIVER_INTERFACE)
TELESCOPE_INTERFACE, CCD_INTERFACE, FILTER_INTERFACE, DOME_INTERFACE = 1, 2, 16, 32

_BAD_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


class IndiError(RuntimeError):
    """The INDI server or one of its devices is not there or not usable."""


# The INDI client ---------------------------------------------------------------------------
@dataclass
class Vector:
    """One INDI property as last seen: ``values`` maps element names to floats (numbers),
    bools (switches), str (texts, and light states), or BLOB sizes."""

    device: str
    name: str
    kind: str
    state: str = IDLE
    perm: str = "ro"
    rule: str = ""
    label: str = ""
    group: str = ""
    timestamp: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # the client's update counter at the last update
    busy_seq: int = 0  # ... at the last update that said Busy
    updated: float = 0.0  # time.monotonic() of the last update

    def on(self) -> list[str]:
        return [k for k, v in self.values.items() if v is True]


def parse_number(text: str) -> float:
    """An INDI number: decimal, or sexagesimal ``d:m:s`` / ``d m s``."""
    text = text.strip()
    if ":" not in text and " " not in text:
        return float(text)
    parts = [p for p in re.split(r"[:\s]+", text) if p]
    sign = -1.0 if parts[0].startswith("-") else 1.0
    out = 0.0
    for k, p in enumerate(parts):
        out += abs(float(p)) / 60.0 ** k
    return sign * out


def _element_value(kind: str, text: str | None, elem: ET.Element) -> Any:
    text = (text or "").strip()
    if kind == "Number":
        try:
            return parse_number(text)
        except (ValueError, IndexError):
            return math.nan
    if kind == "Switch":
        return text == "On"
    if kind == "BLOB":
        return int(elem.get("size", "0") or 0)
    return text


class IndiClient:
    """A minimal INDI client: ``getProperties``, a property cache, ``new*Vector``.

    Thread-safe: the reader thread updates the cache under ``self.cond``; every reader of
    the cache takes the same lock. When the connection drops the cache is emptied and the
    client reconnects every ``retry_s`` until :meth:`close`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 7624, retry_s: float = 2.0,
                 timeout_s: float = 5.0):
        self.host, self.port = host, int(port)
        self.retry_s, self.timeout_s = float(retry_s), float(timeout_s)
        self.cond = threading.Condition()
        self.props: dict[tuple[str, str], Vector] = {}
        # (device, monotonic time received, text) of the drivers' recent messages
        self.messages: deque[tuple[str, float, str]] = deque(maxlen=200)
        self.seq = 0
        self.connected = False
        self.connections = 0  # how many times a connection was made
        self.last_error = ""
        self.on_define: list[Callable[[Vector], None]] = []  # called outside the lock
        self.on_connect: list[Callable[[], None]] = []
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Life cycle ------------------------------------------------------------------------
    def start(self, wait_s: float | None = None) -> None:
        """Start the reader thread; with ``wait_s`` wait that long for a connection and
        raise :class:`IndiError` if none was made."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="indi-reader",
                                            daemon=True)
            self._thread.start()
        if wait_s is not None and not self.wait(lambda: self.connected, wait_s):
            raise IndiError(f"no INDI server at {self.host}:{self.port} "
                            f"({self.last_error or 'no answer'})")

    def close(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            except OSError as exc:
                self.last_error = str(exc)
                self._stop.wait(self.retry_s)
                continue
            sock.settimeout(None)
            self._sock = sock
            with self.cond:
                self.connected = True
                self.connections += 1
                self.cond.notify_all()
            log.info("connected to INDI server %s:%d", self.host, self.port)
            try:
                self.send("<getProperties version='1.7'/>\n")
                for hook in list(self.on_connect):
                    hook()
                self._read(sock)
                self.last_error = "the INDI server closed the connection"
            except (OSError, ET.ParseError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._sock = None
                try:
                    sock.close()
                except OSError:
                    pass
                with self.cond:
                    self.connected = False
                    self.props.clear()  # stale: the server sends everything again
                    self.seq += 1
                    self.cond.notify_all()
            if not self._stop.is_set():
                log.warning("lost the INDI server %s:%d (%s); retrying every %.1f s",
                            self.host, self.port, self.last_error, self.retry_s)
                self._stop.wait(self.retry_s)

    def _read(self, sock: socket.socket) -> None:
        parser = ET.XMLPullParser(events=("start", "end"))
        parser.feed("<indi>")  # the stream is a sequence of top-level elements
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        depth = 0
        root: ET.Element | None = None
        while not self._stop.is_set():
            data = sock.recv(1 << 16)
            if not data:
                return
            parser.feed(_BAD_XML_CHARS.sub("", decoder.decode(data)))
            for event, elem in parser.read_events():
                if event == "start":
                    depth += 1
                    if depth == 1:
                        root = elem
                    continue
                depth -= 1
                if depth == 1:
                    try:
                        self._handle(elem)
                    except (ValueError, KeyError) as exc:  # one odd element: skip it
                        log.debug("ignored INDI element %s: %s", elem.tag, exc)
                    if root is not None:
                        root.clear()

    # Incoming --------------------------------------------------------------------------
    def _handle(self, elem: ET.Element) -> None:
        tag = elem.tag
        device, name = elem.get("device", ""), elem.get("name", "")
        msg = elem.get("message")
        if msg:
            self.messages.append((device, time.monotonic(), msg))
        defined = None
        with self.cond:
            if tag.startswith("def") and tag.endswith("Vector"):
                kind = tag[3:-6]
                if kind not in KINDS:
                    return
                self.seq += 1
                vec = Vector(device, name, kind, elem.get("state", IDLE), elem.get("perm", "ro"),
                             elem.get("rule", ""), elem.get("label", name),
                             elem.get("group", ""), elem.get("timestamp", ""))
                for child in elem:
                    if child.tag == f"def{kind}" and child.get("name"):
                        vec.values[child.get("name")] = _element_value(kind, child.text, child)
                vec.seq, vec.updated = self.seq, time.monotonic()
                if vec.state == BUSY:
                    vec.busy_seq = self.seq
                self.props[(device, name)] = vec
                defined = vec
            elif tag.startswith("set") and tag.endswith("Vector"):
                vec = self.props.get((device, name))
                if vec is None or tag[3:-6] != vec.kind:
                    return
                self.seq += 1
                vec.state = elem.get("state", vec.state)
                vec.timestamp = elem.get("timestamp", vec.timestamp)
                for child in elem:
                    key = child.get("name")
                    if child.tag == f"one{vec.kind}" and key in vec.values:
                        vec.values[key] = _element_value(vec.kind, child.text, child)
                vec.seq, vec.updated = self.seq, time.monotonic()
                if vec.state == BUSY:
                    vec.busy_seq = self.seq
            elif tag == "delProperty":
                self.seq += 1
                if name:
                    self.props.pop((device, name), None)
                else:
                    for key in [k for k in self.props if k[0] == device]:
                        del self.props[key]
            else:
                return
            self.cond.notify_all()
        if defined is not None:
            for hook in list(self.on_define):
                hook(defined)

    # Reading the cache -----------------------------------------------------------------
    def get(self, device: str, name: str) -> Vector | None:
        """A copy of the property, or None if the server has not defined it."""
        with self.cond:
            vec = self.props.get((device, name))
            if vec is None:
                return None
            return Vector(**{**vec.__dict__, "values": dict(vec.values)})

    def value(self, device: str, name: str, element: str, default=None):
        with self.cond:
            vec = self.props.get((device, name))
            return default if vec is None else vec.values.get(element, default)

    def devices(self) -> dict[str, int]:
        """Device names seen, with their DRIVER_INFO.DRIVER_INTERFACE bits (0 if unknown)."""
        with self.cond:
            out: dict[str, int] = {}
            for (dev, name), vec in self.props.items():
                out.setdefault(dev, 0)
                if name == "DRIVER_INFO":
                    try:
                        out[dev] = int(float(vec.values.get("DRIVER_INTERFACE", "0") or 0))
                    except ValueError:
                        pass
            return out

    def last_message(self, device: str, since: float = -math.inf) -> str:
        """The device's latest message received after ``since`` (monotonic), or ""."""
        for dev, t, text in reversed(self.messages):
            if dev == device and t >= since:
                return text
        return ""

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` (evaluated under the lock) is true."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout_s)

    # Outgoing --------------------------------------------------------------------------
    def send(self, xml: str) -> None:
        sock = self._sock
        if sock is None:
            raise IndiError(f"not connected to the INDI server {self.host}:{self.port}")
        with self._send_lock:
            sock.sendall(xml.encode())

    def _new(self, kind: str, device: str, name: str, values: dict[str, str]) -> int:
        body = "".join(f"<one{kind} name={quoteattr(k)}>{escape(v)}</one{kind}>"
                       for k, v in values.items())
        with self.cond:
            seq = self.seq
        try:
            self.send(f"<new{kind}Vector device={quoteattr(device)} name={quoteattr(name)}>"
                      f"{body}</new{kind}Vector>\n")
        except OSError as exc:
            raise IndiError(f"INDI server {self.host}:{self.port}: {exc}") from None
        return seq

    def new_number(self, device: str, name: str, values: dict[str, float]) -> int:
        """Send ``newNumberVector``; returns the update counter before sending."""
        return self._new("Number", device, name, {k: repr(float(v)) for k, v in values.items()})

    def new_switch(self, device: str, name: str, values: dict[str, bool]) -> int:
        return self._new("Switch", device, name,
                         {k: "On" if v else "Off" for k, v in values.items()})

    def new_text(self, device: str, name: str, values: dict[str, str]) -> int:
        return self._new("Text", device, name, {k: str(v) for k, v in values.items()})

    def enable_blob(self, device: str, mode: str = "Never") -> None:
        self.send(f"<enableBLOB device={quoteattr(device)}>{mode}</enableBLOB>\n")


# Steps of a command ------------------------------------------------------------------------
class _Step:
    """One INDI request and how to tell that it finished.

    Finished: the property was ``Busy`` after the request and is not any more, or (for a
    driver that answers at once) it is ``Ok`` with the requested values after ``GRACE_S``.
    ``Alert`` after ``GRACE_S`` (an update already on its way when the request left may
    still carry the previous state) fails the command."""

    GRACE_S = 0.5

    def __init__(self, client: IndiClient, device: str, prop: str, what: str,
                 timeout_s: float, send: Callable[[], int], matches: Callable[[Vector], bool],
                 need_busy: bool = False, skip_if_done: bool = True):
        self.client, self.device, self.prop, self.what = client, device, prop, what
        self.timeout_s, self._send, self.matches = timeout_s, send, matches
        self.need_busy, self.skip_if_done = need_busy, skip_if_done
        self.seq0 = -1
        self.t0 = 0.0
        self.t_busy: float | None = None  # monotonic time Busy was first seen

    def start(self) -> bool:
        """Send the request; True if nothing had to be done."""
        vec = self.client.get(self.device, self.prop)
        if vec is None:
            raise CommandError("device_fault", f"{self.device} has no property {self.prop} "
                               "(not connected?)")
        if self.skip_if_done and vec.state in (OK, IDLE) and self.matches(vec):
            return True
        self.t0 = time.monotonic()
        try:
            self.seq0 = self._send()
        except IndiError as exc:
            raise CommandError("device_fault", str(exc)) from None
        return False

    def done(self) -> bool:
        vec = self.client.get(self.device, self.prop)
        now = time.monotonic()
        if vec is None:
            raise CommandError("device_fault", f"{self.device}.{self.prop} vanished during "
                               f"{self.what} (INDI server or driver gone)")
        fresh = vec.seq > self.seq0
        saw_busy = vec.busy_seq > self.seq0
        if saw_busy and self.t_busy is None:
            self.t_busy = now
        settled = now - self.t0 > self.GRACE_S
        if fresh and vec.state == ALERT and (settled or saw_busy):
            why = (self.client.last_message(self.device, self.t0)
                   or f"{self.prop} went to Alert")
            raise CommandError("device_fault", f"{self.what}: {self.device}: {why}")
        if vec.state in (OK, IDLE) and fresh:
            if saw_busy and vec.busy_seq < vec.seq:
                return True
            if not self.need_busy and settled and self.matches(vec):
                return True
        if now - self.t0 > self.timeout_s:
            raise CommandError("timeout", f"{self.what}: {self.device}.{self.prop} still "
                               f"{vec.state} after {self.timeout_s:.0f} s")
        return False


class _Plan:
    """A command's steps, run in order from ``poll``; ``finish()`` makes the result."""

    def __init__(self, steps: list[_Step], finish: Callable[[float], dict]):
        self.steps, self.finish = list(steps), finish
        self.k = 0
        self.running = False
        self.over = False

    def advance(self, now: float) -> dict | None:
        try:
            while self.k < len(self.steps):
                step = self.steps[self.k]
                if not self.running:
                    if step.start():
                        self.k += 1
                        continue
                    self.running = True
                if not step.done():
                    return None
                self.running = False
                self.k += 1
            result = self.finish(now)
        except BaseException:
            self.over = True
            raise
        self.over = True
        return result


# Sky ---------------------------------------------------------------------------------------
def lst_deg(t_unix: float, lon_east_deg: float) -> float:
    """Local mean sidereal time (degrees) from GMST (IAU 1982, good to ~0.1 s)."""
    d = t_unix / 86400.0 + 2440587.5 - 2451545.0
    return (280.46061837 + 360.98564736629 * d + lon_east_deg) % 360.0


def alt_az_deg(ra_deg: float, dec_deg: float, lat_deg: float, lst: float) -> tuple[float, float]:
    """Altitude and azimuth (north through east), degrees."""
    h = math.radians(lst - ra_deg)
    dec, lat = math.radians(dec_deg), math.radians(lat_deg)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * math.cos(h)
    alt = math.asin(max(-1.0, min(1.0, sin_alt)))
    az = math.atan2(-math.cos(dec) * math.sin(h),
                    math.sin(dec) * math.cos(lat) - math.cos(dec) * math.sin(lat) * math.cos(h))
    return math.degrees(alt), math.degrees(az) % 360.0


def airmass(alt_deg: float) -> float:
    """Kasten & Young (1989); 40 at and below the horizon."""
    if alt_deg <= 0:
        return 40.0
    return min(40.0, 1.0 / (math.sin(math.radians(alt_deg))
                            + 0.50572 * (alt_deg + 6.07995) ** -1.6364))


def _ra_diff_h(a: float, b: float) -> float:
    return abs((a - b + 12.0) % 24.0 - 12.0)


# The SBP1 device ---------------------------------------------------------------------------
class IndiTelescope(Device):
    """INDI mount + CCD (+ dome, + filter wheel) as one SBP1 telescope.

    Device names default to auto-detection from ``DRIVER_INFO.DRIVER_INTERFACE``
    (``"auto"``); ``dome=None`` means no dome. ``filter_slot``: the wheel slot to set
    before each exposure (``wheel`` names the wheel's device, default: a filter-wheel
    device, else the camera). ``lat_deg``/``lon_deg`` (east) are sent to the mount's
    ``GEOGRAPHIC_COORD`` when given, otherwise read from it.
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
                 readout_timeout_s: float = 120.0):
        super().__init__(device_id, site, group, band)
        self.client = client
        self.mount, self.ccd, self.dome, self.wheel = mount, ccd, dome, wheel
        self.filter_slot = filter_slot
        self.limiting_mag, self.ref_seconds = float(limiting_mag), float(ref_seconds)
        self.seeing_arcsec, self.extinction = float(seeing_arcsec), float(extinction)
        self.site_lat, self.site_lon, self.site_elev = lat_deg, lon_deg, elev_m
        self.slew_timeout_s, self.dome_timeout_s = slew_timeout_s, dome_timeout_s
        self.readout_timeout_s = readout_timeout_s
        self._plan: _Plan | None = None
        self._plan_name = ""
        self._last_connect: dict[str, float] = {}
        self._names: list[str] = []
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
            if dev == self.ccd:
                self.client.enable_blob(dev, "Never")  # no images over this link
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
            self.client.enable_blob(self.ccd, "Never")

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
        eq = self.client.get(self.mount, "EQUATORIAL_EOD_COORD")
        if eq is None or not all(math.isfinite(eq.values.get(k, math.nan))
                                 for k in ("RA", "DEC")):
            return {}
        ra, dec = eq.values["RA"] * 15.0 % 360.0, float(eq.values["DEC"])
        hz = self.client.get(self.mount, "HORIZONTAL_COORD")
        if hz is not None and math.isfinite(hz.values.get("ALT", math.nan)):
            alt, az = float(hz.values["ALT"]), float(hz.values.get("AZ", math.nan)) % 360.0
        else:
            lat, lon = self._site()
            alt, az = alt_az_deg(ra, dec, lat, lst_deg(now, lon))
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
        busy = self._plan is not None and not self._plan.over
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
        return out

    # Commands --------------------------------------------------------------------------
    def _switch_step(self, dev: str, prop: str, element: str, what: str, timeout_s: float,
                     values: dict[str, bool] | None = None) -> _Step:
        vals = values or {element: True}
        return _Step(self.client, dev, prop, what, timeout_s,
                     lambda: self.client.new_switch(dev, prop, vals),
                     lambda v: v.values.get(element) is True)

    def _has(self, dev: str | None, prop: str) -> bool:
        return bool(dev) and self.client.get(dev, prop) is not None

    def _unpark_mount_step(self) -> list[_Step]:
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

    def _run(self, name: str, steps: list[_Step], finish: Callable[[float], dict],
             eta: float, now: float, preempt: bool = False) -> dict | Pending:
        if not self.client.connected:
            raise CommandError("device_fault", f"INDI server {self.client.host}:"
                               f"{self.client.port} not connected")
        if not preempt and self._plan is not None and not self._plan.over:
            raise CommandError("busy", f"{self.id} is running {self._plan_name}")
        plan = _Plan(steps, finish)
        self._plan, self._plan_name = plan, name
        result = plan.advance(now)  # sends the first request at once
        if result is not None:
            return result

        def poll(t: float) -> dict | None:
            if self._plan is not plan:
                raise CommandError("aborted", f"{name} cut short")
            return plan.advance(t)

        return Pending(eta, poll)

    def _check_connected(self) -> None:
        with self.client.cond:
            down = [d for d in self._names if not self._is_connected(d)]
        if not self.client.connected or down:
            raise CommandError("device_fault", "INDI server or device(s) not connected: "
                               f"{down or self.client.last_error}")

    def cmd_open(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        steps: list[_Step] = []
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
        ra_h, dec = float(args["ra_deg"]) / 15.0, float(args["dec_deg"])
        tol_deg = 1.0 / 60.0

        def at_target(v: Vector) -> bool:
            return (_ra_diff_h(v.values.get("RA", math.nan), ra_h) * 15.0
                    * math.cos(math.radians(dec)) < tol_deg
                    and abs(v.values.get("DEC", math.nan) - dec) < tol_deg)

        steps = self._unpark_mount_step()
        if self._has(self.mount, "ON_COORD_SET"):
            steps.append(self._switch_step(self.mount, "ON_COORD_SET", "TRACK", "slew", 30.0,
                                           {"TRACK": True, "SLEW": False, "SYNC": False}))
        steps.append(_Step(self.client, self.mount, "EQUATORIAL_EOD_COORD", "slew",
                           self.slew_timeout_s,
                           lambda: self.client.new_number(self.mount, "EQUATORIAL_EOD_COORD",
                                                          {"RA": ra_h, "DEC": dec}),
                           at_target, skip_if_done=False))

        def finish(t: float) -> dict:
            p = self._pointing(t)
            if not p:
                raise CommandError("device_fault", "slew: the mount reports no position")
            return p

        here = self._pointing(now)
        dist = 180.0 if not here else max(_ra_diff_h(here["ra_deg"] / 15.0, ra_h) * 15.0,
                                          abs(here["dec_deg"] - dec))
        # Conservative (0.5 deg/s): PROGRESS only ever extends the brain's deadline.
        eta = now + min(self.slew_timeout_s, 30.0 + 2.0 * dist)
        return self._run("slew", steps, finish, eta, now)

    def cmd_expose(self, args: dict, now: float) -> dict | Pending:
        self._check_connected()
        if self._shutter_open() is False or self._parked():
            raise CommandError("device_fault", "closed or parked")
        seconds = float(args["seconds"])
        steps: list[_Step] = []
        if self.filter_slot is not None:
            slot = float(self.filter_slot)
            steps.append(_Step(self.client, self.wheel, "FILTER_SLOT", "filter", 120.0,
                               lambda: self.client.new_number(self.wheel, "FILTER_SLOT",
                                                              {"FILTER_SLOT_VALUE": slot}),
                               lambda v: abs(v.values.get("FILTER_SLOT_VALUE", -1) - slot)
                               < 0.5))
        expo = _Step(self.client, self.ccd, "CCD_EXPOSURE", "expose",
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
            am = airmass(p["alt_deg"]) if p else 40.0
            lim = (self.limiting_mag + 1.25 * math.log10(seconds / self.ref_seconds)
                   - self.extinction * (am - 1.0))
            return {"obs_id": args["obs_id"], "field_id": int(args["field_id"]),
                    "t_start": t_start, "t_end": t_start + seconds,
                    "limiting_mag": round(lim, 3),
                    "seeing_arcsec": round(self.seeing_arcsec * am ** 0.6, 3),
                    "airmass": round(am, 4)}

        return self._run("expose", steps, finish, now + seconds + 30.0, now)


# Command line ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m drivers.indi",
                description="Serve INDI devices (mount, camera, dome) as one SBP1 telescope.")
    p.add_argument("--indi-host", default="127.0.0.1")
    p.add_argument("--indi-port", type=int, default=7624)
    p.add_argument("--device-id", required=True, help="SBP1 device id, e.g. xl.g01.g")
    p.add_argument("--site", required=True)
    p.add_argument("--group", type=int, required=True)
    p.add_argument("--band", required=True, choices=("g", "r", "i"))
    p.add_argument("--router", default="tcp://127.0.0.1:5550", help="the brain's ROUTER")
    p.add_argument("--keys", help="CURVE key directory (brain.key, devices.key_secret); "
                   "required for a non-loopback router")
    p.add_argument("--mount", default="auto", help="INDI mount device (default: detect)")
    p.add_argument("--ccd", default="auto", help="INDI camera device (default: detect)")
    p.add_argument("--dome", default="auto", help="INDI dome device, or 'none'")
    p.add_argument("--wheel", default=None, help="INDI filter wheel device")
    p.add_argument("--filter-slot", type=int, default=None,
                   help="wheel slot of this telescope's band, set before each exposure")
    p.add_argument("--lat", type=float, default=None, help="site latitude (deg), sent to mount")
    p.add_argument("--lon", type=float, default=None, help="site longitude (deg east)")
    p.add_argument("--elev", type=float, default=None, help="site elevation (m)")
    p.add_argument("--limiting-mag", type=float, default=20.5,
                   help="nominal 5-sigma depth at the zenith for --ref-seconds")
    p.add_argument("--ref-seconds", type=float, default=60.0)
    p.add_argument("--seeing", type=float, default=1.5, help="nominal zenith seeing (arcsec)")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _curve(keys_dir: str) -> tuple[bytes, bytes, bytes]:
    from drivers.keys import device_keys

    try:
        return device_keys(keys_dir)
    except ValueError as exc:
        raise IndiError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    from drivers.device import DeviceHost
    from drivers.link import is_loopback

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    prog = "drivers.indi"
    client = IndiClient(args.indi_host, args.indi_port)
    try:
        if args.keys is None and not is_loopback(args.router):
            raise IndiError(f"router {args.router} is not loopback: give --keys DIR (CURVE)")
        curve = _curve(args.keys) if args.keys else None
        dev = IndiTelescope(args.device_id, args.site, args.group, args.band, client,
                            mount=args.mount, ccd=args.ccd,
                            dome=None if args.dome.lower() == "none" else args.dome,
                            wheel=args.wheel, filter_slot=args.filter_slot,
                            limiting_mag=args.limiting_mag, ref_seconds=args.ref_seconds,
                            seeing_arcsec=args.seeing, lat_deg=args.lat, lon_deg=args.lon,
                            elev_m=args.elev)
        dev.start(timeout_s=args.connect_timeout)
    except (IndiError, ValueError) as exc:
        client.close()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    host = DeviceHost([dev], args.router, WorldClock(), curve=curve)
    print(f"serving {args.device_id} (INDI {args.indi_host}:{args.indi_port}: mount "
          f"{dev.mount!r}, camera {dev.ccd!r}, dome {dev.dome!r}) to {args.router}", flush=True)
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    try:
        host.run(lambda: stop["now"])
    finally:
        host.close()
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
