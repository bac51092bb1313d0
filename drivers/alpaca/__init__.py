"""ASCOM Alpaca bridge: a telescope (mount), camera, dome (and optionally a filter wheel)
on an Alpaca server, served to the brain as one SBP1 telescope; with ``--weather``, an
ObservingConditions and/or SafetyMonitor served as the site's weather device ``{site}.wx``.

``python -m drivers.alpaca --device-id xl.g01.g --site xl --group 1 --band g`` connects
to the Alpaca server (default ``127.0.0.1:11111``) through ``alpyca`` (the ``alpaca``
extra) and to the brain's ROUTER, and maps (docs/alpaca.md has the whole table):

=========  ================================================================================
``open``   dome ``OpenShutter`` (until ``ShutterStatus`` is open), telescope ``Unpark`` if
           ``AtPark``
``close``  camera ``AbortExposure`` and telescope ``AbortSlew`` if busy, dome
           ``CloseShutter`` (without a dome: park the mount)
``park``   camera ``AbortExposure`` if busy, telescope ``Park``
``slew``   ``Unpark`` if parked, ``Tracking`` on, ``SlewToCoordinatesAsync`` (the brain's
           ICRS target converted to the mount's ``EquatorialSystem``), until not
           ``Slewing`` and at the target
``expose`` filter wheel ``Position`` if a slot is configured, camera
           ``StartExposure(seconds, Light=True)`` until ``ImageReady``
``abort``  ``AbortSlew``, ``AbortExposure``
=========  ================================================================================

The package, by concept:

* :mod:`drivers.alpaca.client`: the devices read (polled) and driven on one worker
  thread, so the device host never waits on HTTP;
* :mod:`drivers.alpaca.steps`: a command as a plan of Alpaca requests;
* :mod:`drivers.alpaca.telescope`: :class:`AlpacaTelescope`, the SBP1 telescope;
* :mod:`drivers.alpaca.frames`: ``--photometry``, each exposure's frame downloaded, given
  a WCS header and measured (its ``detections`` sent as the telescope's events);
* :mod:`drivers.alpaca.weather`: :class:`AlpacaWeather`, the SBP1 weather station (the
  rules shared with INDI's: ``drivers/weather.py``);
* :mod:`drivers.alpaca.cli`: the command line (``python -m drivers.alpaca``, run by
  ``drivers/alpaca/__main__.py``).
"""

from drivers.alpaca.cli import build_parser, main
from drivers.alpaca.client import AlpacaClient, AlpacaError
from drivers.alpaca.telescope import AlpacaTelescope
from drivers.alpaca.weather import AlpacaWeather

__all__ = ["AlpacaClient", "AlpacaError", "AlpacaTelescope", "AlpacaWeather", "build_parser",
           "main"]
