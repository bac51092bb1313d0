"""The real ``alpaca-simulators`` server (PyPI ``alpaca-simulators``, the ``dev`` extra) on
a free loopback port, for the Alpaca bridge tests (tests/test_alpaca.py,
tests/test_alpaca_frames.py): the package's device template with a test's changes, and
a local star catalogue in the SQLite columns the simulator's camera (``cabaret``) reads
through its ``tap_source`` setting, so nothing is fetched from the internet (it
otherwise queries Gaia for the stars it draws)."""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import yaml
from alpaca_simulators.config import CONFIG_DIR
from loopback import free_port, start_server


@dataclass
class Simulator:
    port: int
    url: str  # http://127.0.0.1:PORT/api/v1
    proc: object  # subprocess.Popen, its own process group (loopback.stop_group)
    log: Path


def write_catalogue(path: Path, ra, dec, mag) -> None:
    """Stars (degrees, G magnitudes) as the table ``gaia_sources`` cabaret queries."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE gaia_sources (ra REAL, dec REAL, phot_g_mean_mag REAL)")
        db.executemany("INSERT INTO gaia_sources VALUES (?, ?, ?)",
                       zip(np.asarray(ra, float).tolist(), np.asarray(dec, float).tolist(),
                           np.asarray(mag, float).tolist(), strict=True))


def sky_catalogue(path: Path, seed: int, n: int = 20000) -> None:
    """A seeded all-sky catalogue: ``n`` stars uniform on the sphere, G 8 to 17."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    write_catalogue(path, ra, dec, rng.uniform(8.0, 17.0, n))


def start_simulator(home: Path, catalogue: Path, equatorial_system: int,
                    camera: dict) -> Simulator:
    """alpaca-simulators (its console script) on a free port, configured from the
    package's template with the mount's ``equatorialsystem`` (1 equTopocentric, 2
    equJ2000), the camera's settings changed by ``camera`` and ``catalogue`` as the
    camera's star source. Stop it with ``loopback.stop_group(sim.proc)``."""
    config = yaml.safe_load((CONFIG_DIR / "template.yaml").read_text())
    config["devices"]["telescope"][0]["equatorialsystem"] = int(equatorial_system)
    config["devices"]["camera"][0].update(camera)
    config["tap_source"] = str(catalogue)
    (home / "sim.yaml").write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).with_name("alpaca-simulators")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/telescope/0/name", timeout=2).ok
        except requests.RequestException:
            return False

    # an absolute --config path: the server reads it and writes nothing beside itself
    log = home / "server.log"
    proc = start_server([str(exe), "--host", "127.0.0.1", "--port", str(port), "--config",
                         str(home / "sim.yaml")], port, log,
                        env={**os.environ, "NO_PROXY": "*"}, cwd=home, ready=ready)
    return Simulator(port, url, proc, log)
