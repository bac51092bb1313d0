"""INDI bridge: a mount, a camera, a dome (and optionally a filter wheel) on an
``indiserver``, served to the brain as one SBP1 telescope device.

``python -m drivers.indi --device-id xl.g01.g --site xl --group 1 --band g`` connects to
the INDI server (default ``127.0.0.1:7624``) and to the brain's ROUTER, and maps
(docs/indi.md has the whole table):

=========  ================================================================================
``open``   dome ``DOME_PARK: UNPARK`` if parked, ``DOME_SHUTTER: SHUTTER_OPEN``, mount
           ``TELESCOPE_PARK: UNPARK``
``close``  ``CCD_ABORT_EXPOSURE``, ``TELESCOPE_ABORT_MOTION``, ``DOME_SHUTTER: SHUTTER_CLOSE``
           (without a dome: park the mount)
``park``   ``CCD_ABORT_EXPOSURE``, ``TELESCOPE_PARK: PARK``
``slew``   ``TELESCOPE_PARK: UNPARK`` if parked, ``ON_COORD_SET: TRACK``,
           ``EQUATORIAL_EOD_COORD`` (RA in hours, Dec in degrees; the brain's ICRS target
           converted to INDI's epoch of date, and the mount's position back to ICRS)
``expose`` ``FILTER_SLOT`` if a slot is configured, ``CCD_EXPOSURE: CCD_EXPOSURE_VALUE``
``abort``  ``TELESCOPE_ABORT_MOTION: ABORT``, ``CCD_ABORT_EXPOSURE: ABORT``
=========  ================================================================================

A step is finished when its property has been ``Busy`` since the request and is ``Ok``
(or ``Idle``) again, or, for a driver that answers at once, when the property is ``Ok``
with the requested values; ``Alert`` fails the command with ``device_fault`` and the
driver's last message.

The package, by concept:

* :mod:`drivers.indi.client`: the INDI client (standard library only): one TCP socket, a
  reader thread parsing the XML stream incrementally, a property cache, and reconnection
  when the server goes away;
* :mod:`drivers.indi.steps`: a command as a plan of INDI requests and how each finishes;
* :mod:`drivers.indi.weather`: :class:`IndiWeather`, an INDI weather station served as
  the site's SBP1 weather device ``{site}.wx`` (``--weather``);
* :mod:`drivers.indi.telescope`: :class:`IndiTelescope`, the SBP1 device;
* shared with the ASCOM Alpaca bridge (``drivers/alpaca/``): :mod:`drivers.coords` (ICRS
  and INDI's epoch of date) and :mod:`drivers.sky` (sidereal time, alt/az, airmass);
* :mod:`drivers.indi.cli`: the command line (``python -m drivers.indi``, run by
  ``drivers/indi/__main__.py``).
"""

from drivers.coords import eod_to_icrs, icrs_to_eod
from drivers.indi.cli import build_parser, main
from drivers.indi.client import IndiClient, IndiError, Vector, parse_number
from drivers.indi.telescope import IndiTelescope
from drivers.indi.weather import IndiWeather
from drivers.sky import airmass, alt_az_deg, lst_deg

__all__ = ["IndiClient", "IndiError", "IndiTelescope", "IndiWeather", "Vector", "airmass",
           "alt_az_deg", "build_parser", "eod_to_icrs", "icrs_to_eod", "lst_deg", "main",
           "parse_number"]
