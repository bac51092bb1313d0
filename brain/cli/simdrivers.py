"""brain sim-drivers: the simulated array's devices served over SBP1 (rehearsals with brain run)."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import time as _time

import zmq

from brain.cli.common import (
    UsageError,
    clock_args,
    device_curve,
    output_file,
)
from brain.config import load_config, with_climate
from drivers.clock import WorldClock
from drivers.device import DeviceHost
from drivers.simdevices import SimArray
from observatory.ephemeris import night_date
from observatory.sky import FieldGrid
from observatory.visibility import NightCache
from simulator.environment import make_environment

try:  # the `photometry` extra (sep): only --frames needs it
    from drivers.simframes import (
        FRAME_PX,
        FootprintPath,
        FramesPath,
        frame_fraction,
        frame_seconds,
    )
except ModuleNotFoundError as exc:  # a device host with the `drivers` extra alone
    _FRAMES_MISSING: str | None = exc.name
else:
    _FRAMES_MISSING = None

log = logging.getLogger("brain.cli.simdrivers")


def cmd_sim_drivers(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start, until, security = clock_args(args)
    config = load_config(args.config)
    if args.weather == "clear":
        config = with_climate(config, "clear")
    frames = frames_path(args, config)
    want = served(args, config)
    clock = WorldClock(start, args.speed)
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=3)
    first = night_date(config, clock.now())
    env = make_environment(config, args.seed, first, args.nights, args.weather, cache)
    array = SimArray(config, env, cache, frames=frames)
    devices = [d for d in array.devices() if want is None or d.id in want]
    if args.frames:
        n = sum(d.kind == "telescope" for d in devices)
        px = args.frame_px or FRAME_PX
        keeps_up = 1.0 / frame_seconds(px) * (config.survey.exposure_s + 6.0) / n
        log.info("frames: %d telescopes, one %d x %d frame (1\"/pixel, %.1f %% of a field) "
                 "per exposure, about %.1f s of CPU each in one worker process: keeps up "
                 "to about --speed %.1f", n, px, px, 100 * frame_fraction(px, grid.side_deg),
                 frame_seconds(px), keeps_up)
    try:
        curve = device_curve(args.keys) if security == "curve" else None
        log_file = output_file(args.log, "--log").open("a") if args.log is not None else None
        host = DeviceHost(devices, args.router, clock, curve=curve, follow_brain_clock=True,
                          command_log=log_file)
    except zmq.ZMQError as exc:
        array.close()
        raise UsageError(f"cannot connect to {args.router}: {exc}") from None
    except BaseException:
        array.close()
        raise
    print(f"serving {len(devices)} simulated devices to {args.router}, world clock "
          f"x{args.speed:g} from {_time.strftime('%Y-%m-%dT%H:%M:%SZ', _time.gmtime(clock.now()))}",
          flush=True)
    stop = {"now": False}

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(now=True))
    # The loop waits on sockets without the GIL; the photometry thread must not hold
    # it long when a command arrives or an exposure ends.
    sys.setswitchinterval(0.0002)
    try:
        host.run(lambda: stop["now"] or (until is not None and clock.now() >= until))
        if array.waiting:
            log.info("finishing the detections of %d exposures before stopping",
                     array.waiting)
        array.drain()  # the last exposures' detections go out before BYE
        host.step(0)
    finally:
        host.close()
        array.close()
    return 0


def served(args, config) -> set[str] | None:
    """The device ids ``--only`` names (None: all), checked before the sky is made."""
    if not args.only:
        return None
    known = {g.telescope(b) for g in config.groups for b in config.camera.bands}
    known |= {f"{s.id}.wx" for s in config.sites}
    known |= {f"{sp.site}.spec" for sp in config.spectrographs}
    want = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = want - known
    if unknown:
        raise UsageError(f"unknown device {sorted(unknown)[0]!r}")
    if args.frames and not want & {g.telescope(b) for g in config.groups
                                   for b in config.camera.bands}:
        raise UsageError("--frames renders the telescopes' exposures, and --only serves "
                         "no telescope")
    return want


def frames_path(args, config):
    """The frames option's path for SimArray (None: the catalogue rehearsal); bad
    combinations are one-line errors before any work."""
    if args.frames and args.frame_footprint:
        raise UsageError("--frames and --frame-footprint exclude each other (--frame-footprint "
                         "is the catalogue rehearsal to compare a --frames one with)")
    if args.frame_px is not None and not (args.frames or args.frame_footprint):
        raise UsageError("--frame-px needs --frames or --frame-footprint")
    if not (args.frames or args.frame_footprint):
        return None
    if _FRAMES_MISSING is not None:
        flag = "--frames" if args.frames else "--frame-footprint"
        raise UsageError(f"{flag} needs the photometry extra ({_FRAMES_MISSING} is not "
                         "installed): pip install 'sitian-brain[photometry]'")
    return functools.partial(FramesPath if args.frames else FootprintPath,
                             frame_px=args.frame_px or FRAME_PX)
