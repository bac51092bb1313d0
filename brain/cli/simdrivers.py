"""brain sim-drivers: the simulated array's devices served over SBP1 (rehearsals with brain run)."""

from __future__ import annotations

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


def cmd_sim_drivers(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start, until, security = clock_args(args)
    config = load_config(args.config)
    if args.weather == "clear":
        config = with_climate(config, "clear")
    clock = WorldClock(start, args.speed)
    grid = FieldGrid.tile(config.camera.fov_deg2, config.survey.ring_fit)
    cache = NightCache(config, grid, keep=3)
    first = night_date(config, clock.now())
    env = make_environment(config, args.seed, first, args.nights, args.weather, cache)
    array = SimArray(config, env, cache)
    devices = array.devices()
    if args.only:
        want = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = want - {d.id for d in devices}
        if unknown:
            raise UsageError(f"unknown device {sorted(unknown)[0]!r}")
        devices = [d for d in devices if d.id in want]
    curve = device_curve(args.keys) if security == "curve" else None
    log_file = output_file(args.log, "--log").open("a") if args.log is not None else None
    try:
        host = DeviceHost(devices, args.router, clock, curve=curve, follow_brain_clock=True,
                          command_log=log_file)
    except zmq.ZMQError as exc:
        raise UsageError(f"cannot connect to {args.router}: {exc}") from None
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
        array.drain()  # the last exposures' detections go out before BYE
        host.step(0)
    finally:
        host.close()
    return 0
