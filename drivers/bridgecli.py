"""What the hardware bridges' command lines share (``python -m drivers.indi`` and
``python -m drivers.alpaca``; docs/indi.md, docs/alpaca.md): one-line errors, the SBP1
identity and link options, the site and nominal-quality options, the weather-station
options, and serving the one device until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from drivers.clock import WorldClock
from drivers.device import Device, DeviceHost


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_identity_args(p: argparse.ArgumentParser) -> None:
    """The SBP1 identity (a telescope's, or with ``--weather`` the site's station) and the
    brain's ROUTER."""
    p.add_argument("--device-id", help="SBP1 device id, e.g. xl.g01.g (required for a "
                   "telescope; --weather: default {site}.wx)")
    p.add_argument("--site", required=True)
    p.add_argument("--group", type=int, help="telescope group (required for a telescope)")
    p.add_argument("--band", choices=("g", "r", "i"), help="band (required for a telescope)")
    p.add_argument("--router", default="tcp://127.0.0.1:5550", help="the brain's ROUTER")
    p.add_argument("--keys", help="CURVE key directory (brain.key, devices.key_secret); "
                   "required for a non-loopback router")


def add_site_args(p: argparse.ArgumentParser) -> None:
    """The site (sent to the mount) and the nominal quality reported by ``expose``."""
    p.add_argument("--lat", type=float, default=None, help="site latitude (deg), sent to mount")
    p.add_argument("--lon", type=float, default=None, help="site longitude (deg east)")
    p.add_argument("--elev", type=float, default=None, help="site elevation (m)")
    p.add_argument("--limiting-mag", type=float, default=20.5,
                   help="nominal 5-sigma depth at the zenith for --ref-seconds")
    p.add_argument("--ref-seconds", type=float, default=60.0)
    p.add_argument("--seeing", type=float, default=1.5, help="nominal zenith seeing (arcsec)")


def add_weather_args(p: argparse.ArgumentParser, what: str,
                     stale_s: float) -> argparse._ArgumentGroup:
    """``--weather`` and the options every station has; returns the group for the
    bridge's own (which station)."""
    w = p.add_argument_group("weather station (--weather)")
    w.add_argument("--weather", action="store_true",
                   help=f"serve {what} as the site's weather device")
    w.add_argument("--assume", action="append", default=[], metavar="FIELD=VALUE",
                   help="a value for an SBP1 weather field the station does not measure "
                   "(repeatable), e.g. --assume seeing_arcsec=1.5")
    w.add_argument("--stale-s", type=float, default=stale_s,
                   help="station data older than this is reported unsafe (default: %(default)s)")
    w.add_argument("--report-s", type=float, default=30.0,
                   help="report at least this often (default: %(default)s)")
    return w


def add_photometry_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--photometry`` and its options (drivers/framephot.py; docs/photometry.md, "Frames
    from a bridge"): the bridge fetches each exposure's frame, measures it in a worker
    process and sends the exposure's ``detections``. Returns the group for the bridge's
    own options."""
    g = p.add_argument_group("photometry of the camera's frames (--photometry)")
    g.add_argument("--photometry", action="store_true",
                   help="fetch each exposure's frame, measure it and send its detections")
    g.add_argument("--reference", metavar="CAT.csv", default=None,
                   help="calibration stars in the bridge's band (columns ra_deg, dec_deg, "
                   "mag): refine the frame's WCS and give its zero point")
    g.add_argument("--frame-history", metavar="DIR", default=None,
                   help="keep each field's first frames here as the field's own reference")
    g.add_argument("--pixel-scale", type=float, default=None, metavar="ARCSEC",
                   help="pixel scale (arcsec/pixel), used when the frame has no WCS: the "
                   "WCS is then built from the mount's pointing at mid-exposure")
    g.add_argument("--rotation", type=float, default=0.0, metavar="DEG",
                   help="the camera's rotation on the sky (deg; the bridge's page gives its "
                   "sense), used with --pixel-scale when the frame has no WCS "
                   "(default: %(default)s)")
    return g


def check_photometry_args(parser: argparse.ArgumentParser, args) -> None:
    """The photometry options go with ``--photometry``, and ``--photometry`` with a
    telescope."""
    if args.photometry and getattr(args, "weather", False):
        parser.error("--photometry measures a telescope's frames, not with --weather")
    given = [f"--{k.replace('_', '-')}" for k, default in
             (("reference", None), ("frame_history", None), ("pixel_scale", None),
              ("rotation", 0.0)) if getattr(args, k) != default]
    if given and not args.photometry:
        parser.error(f"{', '.join(given)} need(s) --photometry")
    if args.pixel_scale is not None and not args.pixel_scale > 0:
        parser.error(f"--pixel-scale must be positive, not {args.pixel_scale:g}")


def check_telescope_args(parser: argparse.ArgumentParser, args) -> None:
    """Without ``--weather`` the bridge serves a telescope: its identity is required."""
    if args.weather:
        return
    absent = [f"--{k.replace('_', '-')}" for k in ("device_id", "group", "band")
              if getattr(args, k) is None]
    if absent:
        parser.error(f"a telescope needs {', '.join(absent)} (or give --weather)")


def serve(dev: Device, router: str, curve, close: Callable[[], None]) -> int:
    """Serve ``dev`` to the brain until SIGTERM or Ctrl-C, then ``close`` the bridge's
    client."""
    host = DeviceHost([dev], router, WorldClock(), curve=curve)
    # The loop waits on sockets without the GIL; a thread decoding a frame (an INDI
    # BLOB, an Alpaca download) must not hold it long when a command arrives.
    sys.setswitchinterval(0.0002)
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    try:
        host.run(lambda: stop["now"])
    finally:
        host.close()
        close()
    return 0
