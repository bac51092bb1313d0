"""The survey's bands: g, r and i, one per telescope of a group, indexed 0, 1, 2 in
arrays (detections, light curves, exposures)."""

BANDS = ("g", "r", "i")
BAND_INDEX = {b: k for k, b in enumerate(BANDS)}
