"""Record layouts shared by the shells, the journal and the run files."""

# One row per exposure (observations.csv, the journal's observations table, the world's
# log): docs/contracts.md, "Files written by brain simulate".
OBS_COLUMNS = ("obs_id", "telescope", "site", "group", "band", "field_id", "ra_deg", "dec_deg",
               "t_start", "t_end", "alt_deg", "airmass", "moon_sep_deg", "sun_alt_deg",
               "limiting_mag")
