"""Astropy configured for offline use: nothing is downloaded at run time.

IERS tables come from the ``astropy-iers-data`` package; predictions beyond its range
degrade accuracy with a warning instead of a download. Import this module before any
astropy time or coordinate work (``observatory.ephemeris`` does).
"""

import warnings

from astropy.utils import data as _data
from astropy.utils import iers

iers.conf.auto_download = False
iers.conf.auto_max_age = None
iers.conf.iers_degraded_accuracy = "warn"
_data.conf.allow_internet = False
warnings.filterwarnings("ignore", message=".*(dubious year|leap-second).*")
