"""The INDI client: one TCP socket to an ``indiserver``, a reader thread parsing the XML
stream incrementally, a property cache with each property's state, reconnection when the
server goes away, and the camera's frames (BLOBs) when asked for them. Standard library
only.
"""

from __future__ import annotations

import binascii
import codecs
import logging
import math
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

log = logging.getLogger("sitian.indi")

IDLE, OK, BUSY, ALERT = "Idle", "Ok", "Busy", "Alert"
KINDS = ("Number", "Switch", "Text", "Light", "BLOB")
# DRIVER_INFO.DRIVER_INTERFACE bits (INDI::BaseDevice::DRIVER_INTERFACE)
TELESCOPE_INTERFACE, CCD_INTERFACE, FILTER_INTERFACE, DOME_INTERFACE = 1, 2, 16, 32

_BAD_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
# BLOB formats delivered (a ".z" suffix: zlib-compressed by the driver, inflated here);
# ".fits.fz" is a tile-compressed FITS file, read as it is by astropy.
BLOB_FORMATS = (".fits", ".fit", ".fits.fz", ".fz")
BLOBS_KEPT = 2  # frames held for the bridge to take; an older one is dropped
DECODE_CHUNK = 1 << 20  # a frame is decoded this much at a time (see _b64decode_chunked)
_B64_SPACE = b" \t\r\n"


def _b64decode_chunked(text: str) -> bytes:
    """Base64 to bytes a megabyte at a time: one call on a 4k frame's 45 MB would hold
    the GIL for a tenth of a second and stall the bridge's protocol loop."""
    raw = text.encode("ascii").translate(None, _B64_SPACE)
    if len(raw) % 4:
        raise ValueError(f"base64 text of {len(raw)} characters (not a multiple of 4)")
    step = DECODE_CHUNK - DECODE_CHUNK % 4
    return b"".join(binascii.a2b_base64(raw[k:k + step]) for k in range(0, len(raw), step))


def _inflate_chunked(data: bytes) -> bytes:
    """zlib-inflate a megabyte of input at a time (as ``_b64decode_chunked``)."""
    d = zlib.decompressobj()
    out = [d.decompress(data[k:k + DECODE_CHUNK]) for k in range(0, len(data), DECODE_CHUNK)]
    out.append(d.flush())
    if not d.eof:
        raise ValueError("the compressed frame is cut short")
    return b"".join(out)


class IndiError(RuntimeError):
    """The INDI server or one of its devices is not there or not usable."""


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


@dataclass(frozen=True)
class Blob:
    """One BLOB (a camera's frame) as received: ``data`` decoded (and inflated), ``format``
    without a ``.z`` suffix, ``received`` the ``time.monotonic()`` of its arrival."""

    device: str
    name: str  # the vector's name, e.g. CCD1 (the primary chip)
    element: str
    format: str
    data: bytes = field(repr=False)
    received: float = 0.0


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
        # BLOBs (frames) not yet taken, newest last, at most BLOBS_KEPT (take_blob)
        self.blobs: deque[Blob] = deque(maxlen=BLOBS_KEPT)
        self.blob_stats = {"received": 0, "bytes": 0, "skipped": 0, "dropped": 0}
        self._blob_warned: set[tuple[str, str]] = set()
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
            data = sock.recv(1 << 18)
            if not data:
                return
            parser.feed(_BAD_XML_CHARS.sub("", decoder.decode(data)))
            del data
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
                    # Free it now (a frame's BLOB is tens of MB of text): the parser keeps
                    # a reference to the element it closed last.
                    elem.clear()
                    if root is not None:
                        root.clear()
            elem = None

    # Incoming --------------------------------------------------------------------------
    def _handle(self, elem: ET.Element) -> None:
        tag = elem.tag
        device, name = elem.get("device", ""), elem.get("name", "")
        msg = elem.get("message")
        if msg:
            self.messages.append((device, time.monotonic(), msg))
        defined = None
        blobs = False
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
                blobs = vec.kind == "BLOB"
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
        if blobs:  # decoded outside the lock
            for child in elem:
                if child.tag == "oneBLOB":
                    self._take_in_blob(device, name, child)

    def _take_in_blob(self, device: str, name: str, one: ET.Element) -> None:
        """Decode one ``oneBLOB`` and keep it for :meth:`take_blob` (at most ``BLOBS_KEPT``:
        an untaken older frame is dropped). A format that is not FITS, or content that
        does not decode, is counted and skipped with a warning (once per device and
        format)."""
        text = one.text or ""
        if not text.strip():  # an empty BLOB: the driver sent nothing this time
            return
        fmt = (one.get("format") or "").strip().lower()
        element = one.get("name", "")
        base = fmt[:-2] if fmt.endswith(".z") else fmt
        try:
            if base not in BLOB_FORMATS:
                raise ValueError(f"format {fmt or '(none)'!r} is not FITS")
            data = _b64decode_chunked(text)
            if fmt.endswith(".z"):
                data = _inflate_chunked(data)
                want = int(float(one.get("size", "0") or 0))
            else:
                want = int(float(one.get("len", "0") or 0))
            if want and len(data) != want:
                raise ValueError(f"{len(data)} bytes where {want} were announced")
        except (ValueError, binascii.Error, zlib.error) as exc:
            self.blob_stats["skipped"] += 1
            if (device, fmt) not in self._blob_warned:
                self._blob_warned.add((device, fmt))
                log.warning("skipped a BLOB from %s.%s.%s: %s (further ones of this format "
                            "are counted, not logged)", device, name, element, exc)
            return
        finally:
            one.text = None
        blob = Blob(device, name, element, base, data, time.monotonic())
        with self.cond:
            if len(self.blobs) == self.blobs.maxlen:
                self.blob_stats["dropped"] += 1
            self.blobs.append(blob)
            self.blob_stats["received"] += 1
            self.blob_stats["bytes"] += len(data)
            self.cond.notify_all()

    def take_blob(self, device: str, name: str, since: float,
                  before: float = math.inf) -> Blob | None:
        """The oldest kept BLOB of ``device``'s vector ``name`` received in [``since``,
        ``before``) (monotonic), removed from the client; those of that vector received
        before ``since`` are dropped as stale. None if there is none."""
        with self.cond:
            got = None
            for b in list(self.blobs):
                if b.device != device or b.name != name:
                    continue
                if b.received < since:
                    self.blobs.remove(b)
                    self.blob_stats["dropped"] += 1
                elif got is None and b.received < before:
                    got = b
            if got is not None:
                self.blobs.remove(got)
            return got

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

    def enable_blob(self, device: str, mode: str = "Never", name: str | None = None) -> None:
        """Ask the server for ``device``'s BLOBs on this link (``Never``, ``Also``,
        ``Only``): all of them, or with ``name`` those of that one vector."""
        prop = f" name={quoteattr(name)}" if name else ""
        self.send(f"<enableBLOB device={quoteattr(device)}{prop}>{mode}</enableBLOB>\n")
