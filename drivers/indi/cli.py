"""The bridge's command line: ``python -m drivers.indi`` (docs/indi.md, "Running it"), and
with ``--weather`` the site's weather station as ``{site}.wx`` (docs/indi.md, "Weather")."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from drivers.clock import WorldClock
from drivers.device import DeviceHost
from drivers.endpoint import is_loopback
from drivers.indi.client import IndiClient, IndiError
from drivers.indi.telescope import IndiTelescope
from drivers.indi.weather import IndiWeather
from drivers.keys import device_keys
from drivers.weather import parse_assume


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m drivers.indi",
                description="Serve INDI devices (mount, camera, dome) as one SBP1 telescope, "
                "or with --weather an INDI weather station as the site's {site}.wx.")
    p.add_argument("--indi-host", default="127.0.0.1")
    p.add_argument("--indi-port", type=int, default=7624)
    p.add_argument("--device-id", help="SBP1 device id, e.g. xl.g01.g (required for a "
                   "telescope; --weather: default {site}.wx)")
    p.add_argument("--site", required=True)
    p.add_argument("--group", type=int, help="telescope group (required for a telescope)")
    p.add_argument("--band", choices=("g", "r", "i"), help="band (required for a telescope)")
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
    w = p.add_argument_group("weather station (--weather)")
    w.add_argument("--weather", action="store_true",
                   help="serve an INDI weather station as the site's weather device")
    w.add_argument("--station", default="auto", help="INDI weather device (default: detect)")
    w.add_argument("--assume", action="append", default=[], metavar="FIELD=VALUE",
                   help="a value for an SBP1 weather field the station does not measure "
                   "(repeatable), e.g. --assume seeing_arcsec=1.5")
    w.add_argument("--stale-s", type=float, default=120.0,
                   help="station data older than this is reported unsafe (default: %(default)s)")
    w.add_argument("--report-s", type=float, default=30.0,
                   help="report at least this often (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _weather(args, client: IndiClient) -> IndiWeather:
    dev = IndiWeather(args.site, client, station=args.station, device_id=args.device_id,
                      assume=parse_assume(args.assume), stale_s=args.stale_s,
                      report_s=args.report_s)
    dev.start(timeout_s=args.connect_timeout)
    return dev


def _curve(keys_dir: str) -> tuple[bytes, bytes, bytes]:
    try:
        return device_keys(keys_dir)
    except ValueError as exc:
        raise IndiError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.weather:
        absent = [f"--{k.replace('_', '-')}" for k in ("device_id", "group", "band")
                  if getattr(args, k) is None]
        if absent:
            parser.error(f"a telescope needs {', '.join(absent)} (or give --weather)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    prog = "drivers.indi"
    client = IndiClient(args.indi_host, args.indi_port)
    try:
        if args.keys is None and not is_loopback(args.router):
            raise IndiError(f"router {args.router} is not loopback: give --keys DIR (CURVE)")
        curve = _curve(args.keys) if args.keys else None
        if args.weather:
            dev = _weather(args, client)
        else:
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
    what = (f"weather station {dev.station!r}" if args.weather else
            f"mount {dev.mount!r}, camera {dev.ccd!r}, dome {dev.dome!r}")
    print(f"serving {dev.id} (INDI {args.indi_host}:{args.indi_port}: {what}) to "
          f"{args.router}", flush=True)
    stop = {"now": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    try:
        host.run(lambda: stop["now"])
    finally:
        host.close()
        client.close()
    return 0
