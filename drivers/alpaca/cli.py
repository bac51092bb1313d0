"""The ASCOM Alpaca bridge's command line: ``python -m drivers.alpaca`` (docs/alpaca.md,
"Running it"): a telescope (with ``--photometry``, its frames measured: "Photometry"), or
with ``--weather`` the site's weather station."""

from __future__ import annotations

import argparse
import logging
import sys

from drivers.alpaca.client import AlpacaClient, AlpacaError
from drivers.alpaca.frames import AlpacaFrames, FrameOptions
from drivers.alpaca.telescope import AlpacaTelescope
from drivers.alpaca.weather import AlpacaWeather
from drivers.bridgecli import (
    OneLineParser,
    add_identity_args,
    add_photometry_args,
    add_site_args,
    add_weather_args,
    check_photometry_args,
    check_telescope_args,
    serve,
)
from drivers.coords import SYSTEMS
from drivers.endpoint import is_loopback
from drivers.framephot import FrameReducer
from drivers.keys import device_keys
from drivers.weather import parse_assume

PROG = "drivers.alpaca"


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
    p = OneLineParser(prog="python -m drivers.alpaca",
                description="Serve ASCOM Alpaca devices (telescope, camera, dome) as one SBP1 "
                "telescope, or with --weather an ObservingConditions and/or SafetyMonitor as "
                "the site's {site}.wx.")
    p.add_argument("--alpaca-host", default="127.0.0.1")
    p.add_argument("--alpaca-port", type=int, default=11111)
    add_identity_args(p)
    p.add_argument("--telescope", type=_number, default=0, help="Alpaca telescope number")
    p.add_argument("--camera", type=_number, default=0, help="Alpaca camera number")
    p.add_argument("--dome", type=_number, default=0, help="Alpaca dome number, or 'none'")
    p.add_argument("--filterwheel", type=_number, default=None,
                   help="Alpaca filter wheel number (default: none)")
    p.add_argument("--filter-slot", type=int, default=None,
                   help="wheel position of this telescope's band, set before each exposure")
    p.add_argument("--equatorial-system", default="auto", choices=("auto", *SYSTEMS),
                   help="the mount's coordinates (default: its EquatorialSystem)")
    add_site_args(p)
    p.add_argument("--poll-s", type=float, default=None,
                   help="seconds between polls of the devices (default: 0.5, --weather 5)")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    g = add_photometry_args(p)
    g.add_argument("--mirrored", action="store_true",
                   help="the frame is mirrored: east to the right when north is up")
    w = add_weather_args(p, "ObservingConditions/SafetyMonitor", stale_s=60.0)
    w.add_argument("--conditions", type=_number, default=0,
                   help="ObservingConditions number, or 'none'")
    w.add_argument("--safety", type=_number, default=0,
                   help="SafetyMonitor number, or 'none'")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def check_alpaca_photometry(parser: argparse.ArgumentParser, args) -> None:
    """Beyond the bridges' shared checks: ``--mirrored`` goes with ``--photometry``, which
    needs calibration stars (the frames' zero point: an Alpaca frame carries no MAGZP)."""
    check_photometry_args(parser, args)
    if args.mirrored and not args.photometry:
        parser.error("--mirrored needs --photometry")
    if args.photometry and args.reference is None:
        parser.error("--photometry needs --reference CAT.csv (calibration stars: the "
                     "frames' zero point)")


def frame_options(args) -> FrameOptions:
    return FrameOptions(pixel_scale=args.pixel_scale, rotation_deg=args.rotation,
                        mirrored=args.mirrored)


def _device(args, client: AlpacaClient, frames: AlpacaFrames | None):
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
                              elev_m=args.elev, frames=frames)
    dev.start(timeout_s=args.connect_timeout)
    return dev


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_telescope_args(parser, args)
    check_alpaca_photometry(parser, args)
    if not args.weather:
        if args.telescope is None or args.camera is None:
            parser.error("a telescope needs --telescope and --camera device numbers")
    if args.poll_s is not None and not args.poll_s > 0:
        parser.error("--poll-s must be positive")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    client = AlpacaClient(args.alpaca_host, args.alpaca_port,
                          poll_s=args.poll_s or (5.0 if args.weather else 0.5))
    frames = None
    try:
        if args.keys is None and not is_loopback(args.router):
            raise AlpacaError(f"router {args.router} is not loopback: give --keys DIR (CURVE)")
        curve = device_keys(args.keys) if args.keys else None
        if args.photometry:  # the reference is read here: a bad one fails before connecting
            frames = AlpacaFrames(client, FrameReducer(args.reference, args.frame_history),
                                  frame_options(args))
        dev = _device(args, client, frames)
    except (AlpacaError, ValueError, OSError) as exc:  # PhotometryError is a ValueError
        if frames is not None:
            frames.close()
        client.close()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {dev.id} (Alpaca {client.address}: "
          f"{', '.join(f'{k} {r.device.device_number}' for k, r in client.roles.items())}) "
          f"to {args.router}", flush=True)

    def close() -> None:
        if frames is not None:
            frames.close()
        client.close()

    return serve(dev, args.router, curve, close)
