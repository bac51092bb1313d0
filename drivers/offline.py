"""Astropy configured for offline use by the drivers: nothing is downloaded at run time.

The same settings as ``simulator/offline.py``, kept here because the drivers import the
simulator only for the simulator-backed devices (``drivers/simdevices.py``); the INDI
bridge's coordinate conversions (``drivers/indi/coords.py``) call :func:`configure`
before any astropy time or coordinate work. IERS tables come from the
``astropy-iers-data`` package; times beyond its range degrade accuracy with a warning
instead of a download.
"""

import warnings

from astropy.utils import data as _data
from astropy.utils import iers


def configure() -> None:
    """Set astropy offline (idempotent)."""
    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"
    _data.conf.allow_internet = False
    warnings.filterwarnings("ignore", message=".*(dubious year|leap-second).*")
