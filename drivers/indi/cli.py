"""The bridge's command line: ``python -m drivers.indi`` (docs/indi.md, "Running it"), and
with ``--weather`` the site's weather station as ``{site}.wx`` (docs/indi.md, "Weather")."""

from __future__ import annotations

import argparse
import logging
import sys

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
from drivers.endpoint import is_loopback
from drivers.indi.client import IndiClient, IndiError
from drivers.indi.frames import FRAME_TIMEOUT_S, open_reducer
from drivers.indi.telescope import IndiTelescope
from drivers.indi.weather import IndiWeather
from drivers.keys import device_keys
from drivers.weather import parse_assume


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m drivers.indi",
                description="Serve INDI devices (mount, camera, dome) as one SBP1 telescope, "
                "or with --weather an INDI weather station as the site's {site}.wx.")
    p.add_argument("--indi-host", default="127.0.0.1")
    p.add_argument("--indi-port", type=int, default=7624)
    add_identity_args(p)
    p.add_argument("--mount", default="auto", help="INDI mount device (default: detect)")
    p.add_argument("--ccd", default="auto", help="INDI camera device (default: detect)")
    p.add_argument("--dome", default="auto", help="INDI dome device, or 'none'")
    p.add_argument("--wheel", default=None, help="INDI filter wheel device")
    p.add_argument("--filter-slot", type=int, default=None,
                   help="wheel slot of this telescope's band, set before each exposure")
    add_site_args(p)
    g = add_photometry_args(p)
    g.add_argument("--frame-timeout", type=float, default=FRAME_TIMEOUT_S, metavar="S",
                   help="give an exposure's frame up this many seconds after the exposure "
                   "ends (a slow link, large frames; default: %(default)g)")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    w = add_weather_args(p, "an INDI weather station", stale_s=120.0)
    w.add_argument("--station", default="auto", help="INDI weather device (default: detect)")
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
    check_telescope_args(parser, args)
    check_photometry_args(parser, args)
    if args.frame_timeout != FRAME_TIMEOUT_S and not args.photometry:
        parser.error("--frame-timeout needs --photometry")
    if not 1 <= args.frame_timeout <= 3600:
        parser.error(f"--frame-timeout must be 1 to 3600 s, not {args.frame_timeout:g}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    prog = "drivers.indi"
    client = IndiClient(args.indi_host, args.indi_port)
    reducer = None
    try:
        if args.keys is None and not is_loopback(args.router):
            raise IndiError(f"router {args.router} is not loopback: give --keys DIR (CURVE)")
        curve = _curve(args.keys) if args.keys else None
        # A bad --reference fails here, before anything is connected.
        reducer = open_reducer(args.photometry, args.reference, args.frame_history)
        if args.weather:
            dev = _weather(args, client)
        else:
            dev = IndiTelescope(args.device_id, args.site, args.group, args.band, client,
                                mount=args.mount, ccd=args.ccd,
                                dome=None if args.dome.lower() == "none" else args.dome,
                                wheel=args.wheel, filter_slot=args.filter_slot,
                                limiting_mag=args.limiting_mag, ref_seconds=args.ref_seconds,
                                seeing_arcsec=args.seeing, lat_deg=args.lat, lon_deg=args.lon,
                                elev_m=args.elev, reducer=reducer,
                                pixel_scale_arcsec=args.pixel_scale,
                                rotation_deg=args.rotation,
                                frame_timeout_s=args.frame_timeout)
            dev.start(timeout_s=args.connect_timeout)
    except (IndiError, ValueError, OSError) as exc:
        client.close()
        if reducer is not None:
            reducer.close()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    what = (f"weather station {dev.station!r}" if args.weather else
            f"mount {dev.mount!r}, camera {dev.ccd!r}, dome {dev.dome!r}")
    if reducer is not None:
        what += (f"; photometry of each frame (reference {args.reference or 'none'}, "
                 f"field history {args.frame_history or 'none'})")
    print(f"serving {dev.id} (INDI {args.indi_host}:{args.indi_port}: {what}) to "
          f"{args.router}", flush=True)

    def close() -> None:
        client.close()
        if reducer is not None:
            reducer.close()

    return serve(dev, args.router, curve, close)
