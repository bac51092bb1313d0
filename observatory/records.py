"""Record layouts shared by the shells, the journal and the run files."""

import numpy as np

# One row per exposure (observations.csv, the journal's observations table, the world's
# log): docs/contracts.md, "Files written by brain simulate".
OBS_COLUMNS = ("obs_id", "telescope", "site", "group", "band", "field_id", "ra_deg", "dec_deg",
               "t_start", "t_end", "alt_deg", "airmass", "moon_sep_deg", "sun_alt_deg",
               "limiting_mag")
OBS_DTYPE = np.dtype([
    ("obs_id", "U40"), ("telescope", "U16"), ("site", "U8"), ("group", "i4"), ("band", "U1"),
    ("field_id", "i4"), ("ra_deg", "f8"), ("dec_deg", "f8"), ("t_start", "f8"), ("t_end", "f8"),
    ("alt_deg", "f8"), ("airmass", "f8"), ("moon_sep_deg", "f8"), ("sun_alt_deg", "f8"),
    ("limiting_mag", "f8")])
assert OBS_DTYPE.names == OBS_COLUMNS


def observations_array(rows) -> np.ndarray:
    """Rows (tuples in OBS_COLUMNS order, or an array already) as a structured array."""
    if isinstance(rows, np.ndarray):
        return rows
    return np.array(rows, dtype=OBS_DTYPE) if len(rows) else np.zeros(0, dtype=OBS_DTYPE)
