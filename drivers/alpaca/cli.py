"""The ASCOM Alpaca bridge's command line: ``python -m drivers.alpaca`` (docs/alpaca.md,
"Running it"): a telescope, or with ``--weather`` the site's weather station."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from drivers.alpaca.client import AlpacaClient, AlpacaError
from drivers.alpaca.telescope import AlpacaTelescope
from drivers.alpaca.weather import AlpacaWeather
from drivers.clock import WorldClock
from drivers.coords import SYSTEMS
from drivers.device import DeviceHost
from drivers.endpoint import is_loopback
from drivers.keys import device_keys
from drivers.weather import parse_assume

PROG = "drivers.alpaca"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str) -> int | None:
    """A device number, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device number or 'none'") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"device number {n} is negative")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m drivers.alpaca",
                description="Serve ASCOM Alpaca devices (telescope, camera, dome) as one SBP1 "
                "telescope, or with --weather an ObservingConditions and/or SafetyMonitor as "
                "the site's {site}.wx.")
    p.add_argument("--alpaca-host", default="127.0.0.1")
    p.add_argument("--alpaca-port", type=int, default=11111)
    p.add_argument("--device-id", help="SBP1 device id, e.g. xl.g01.g (required for a "
                   "telescope; --weather: default {site}.wx)")
    p.add_argument("--site", required=True)
    p.add_argument("--group", type=int, help="telescope group (required for a telescope)")
    p.add_argument("--band", choices=("g", "r", "i"), help="band (required for a telescope)")
    p.add_argument("--router", default="tcp://127.0.0.1:5550", help="the brain's ROUTER")
    p.add_argument("--keys", help="CURVE key directory (brain.key, devices.key_secret); "
                   "required for a non-loopback router")
    p.add_argument("--telescope", type=_number, default=0, help="Alpaca telescope number")
    p.add_argument("--camera", type=_number, default=0, help="Alpaca camera number")
    p.add_argument("--dome", type=_number, default=0, help="Alpaca dome number, or 'none'")
    p.add_argument("--filterwheel", type=_number, default=None,
                   help="Alpaca filter wheel number (default: none)")
    p.add_argument("--filter-slot", type=int, default=None,
                   help="wheel position of this telescope's band, set before each exposure")
    p.add_argument("--equatorial-system", default="auto", choices=("auto", *SYSTEMS),
                   help="the mount's coordinates (default: its EquatorialSystem)")
    p.add_argument("--lat", type=float, default=None, help="site latitude (deg), sent to mount")
    p.add_argument("--lon", type=float, default=None, help="site longitude (deg east)")
    p.add_argument("--elev", type=float, default=None, help="site elevation (m)")
    p.add_argument("--limiting-mag", type=float, default=20.5,
                   help="nominal 5-sigma depth at the zenith for --ref-seconds")
    p.add_argument("--ref-seconds", type=float, default=60.0)
    p.add_argument("--seeing", type=float, default=1.5, help="nominal zenith seeing (arcsec)")
    p.add_argument("--poll-s", type=float, default=None,
                   help="seconds between polls of the devices (default: 0.5, --weather 5)")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    w = p.add_argument_group("weather station (--weather)")
    w.add_argument("--weather", action="store_true",
                   help="serve ObservingConditions/SafetyMonitor as the site's weather device")
    w.add_argument("--conditions", type=_number, default=0,
                   help="ObservingConditions number, or 'none'")
    w.add_argument("--safety", type=_number, default=0,
                   help="SafetyMonitor number, or 'none'")
    w.add_argument("--assume", action="append", default=[], metavar="FIELD=VALUE",
                   help="a value for an SBP1 weather field the station does not measure "
                   "(repeatable), e.g. --assume seeing_arcsec=1.5")
    w.add_argument("--stale-s", type=float, default=60.0,
                   help="station data older than this is reported unsafe (default: %(default)s)")
    w.add_argument("--report-s", type=float, default=30.0,
                   help="report at least this often (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _device(args, client: AlpacaClient):
    if args.weather:
        dev = AlpacaWeather(args.site, client, conditions=args.conditions, safety=args.safety,
                            device_id=args.device_id, assume=parse_assume(args.assume),
                            stale_s=args.stale_s, report_s=args.report_s)
    else:
        dev = AlpacaTelescope(args.device_id, args.site, args.group, args.band, client,
                              telescope=args.telescope, camera=args.camera, dome=args.dome,
                              filterwheel=args.filterwheel, filter_slot=args.filter_slot,
                              equatorial_system=args.equatorial_system,
                              limiting_mag=args.limiting_mag, ref_seconds=args.ref_seconds,
                              seeing_arcsec=args.seeing, lat_deg=args.lat, lon_deg=args.lon,
                              elev_m=args.elev)
    dev.start(timeout_s=args.connect_timeout)
    return dev


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.weather:
        absent = [f"--{k.replace('_', '-')}" for k in ("device_id", "group", "band")
                  if getattr(args, k) is None]
        if absent:
            parser.error(f"a telescope needs {', '.join(absent)} (or give --weather)")
        if args.telescope is None or args.camera is None:
            parser.error("a telescope needs --telescope and --camera device numbers")
    if args.poll_s is not None and not args.poll_s > 0:
        parser.error("--poll-s must be positive")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    client = AlpacaClient(args.alpaca_host, args.alpaca_port,
                          poll_s=args.poll_s or (5.0 if args.weather else 0.5))
    try:
        if args.keys is None and not is_loopback(args.router):
            raise AlpacaError(f"router {args.router} is not loopback: give --keys DIR (CURVE)")
        curve = device_keys(args.keys) if args.keys else None
        dev = _device(args, client)
    except (AlpacaError, ValueError) as exc:
        client.close()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    host = DeviceHost([dev], args.router, WorldClock(), curve=curve)
    print(f"serving {dev.id} (Alpaca {client.address}: "
          f"{', '.join(f'{k} {r.device.device_number}' for k, r in client.roles.items())}) "
          f"to {args.router}", flush=True)
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    try:
        host.run(lambda: stop["now"])
    finally:
        host.close()
        client.close()
    return 0
