"""Frames to detections: the real-time photometry pipeline beside a telescope.

A frame (2-D array + FITS header) becomes the rows of a ``detections`` event
(docs/protocol.md): background, source extraction and aperture photometry with ``sep``,
the header's WCS refined against a reference catalogue, a zero point from the reference
stars (or the header's MAGZP), and new or changed sources against the survey's own
earlier detections. Needs the ``photometry`` extra (``sep``). docs/photometry.md.
"""

from drivers.photometry.calibrate import (
    Catalogue,
    Changes,
    ZeroPoint,
    build_reference,
    find_changes,
    match_sky,
)
from drivers.photometry.config import (
    BAD_FOR_CALIBRATION,
    FLAG_EDGE,
    FLAG_SATURATED,
    PhotometryConfig,
    PhotometryError,
)
from drivers.photometry.files import OUTPUT_COLUMNS, read_frame, read_reference
from drivers.photometry.pipeline import FrameResult, process_frame

__all__ = ["BAD_FOR_CALIBRATION", "FLAG_EDGE", "FLAG_SATURATED", "OUTPUT_COLUMNS",
           "Catalogue", "Changes", "FrameResult", "PhotometryConfig", "PhotometryError",
           "ZeroPoint", "build_reference", "find_changes", "match_sky", "process_frame",
           "read_frame", "read_reference"]
