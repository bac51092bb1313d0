"""The taxonomy: the fixed class names every part of the brain, the classifier and the
run files use (docs/contracts.md, "Taxonomy")."""

CLASSES = ("SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "CV", "Flare", "uLens",
           "RRL", "EB", "DSCT", "LPV", "AGN")
# Classes that are events (a spectrum of one can be taken before its peak).
TRANSIENTS = ("SNIa", "SNII", "SNIbc", "SLSN", "TDE", "KN", "CV", "Flare", "uLens")
VARIABLES = ("RRL", "EB", "DSCT", "LPV", "AGN")
PERIODIC = ("RRL", "EB", "DSCT", "LPV")
