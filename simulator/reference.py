"""The survey's reference: what a deep co-add of earlier frames holds at a source.

A difference-imaging pipeline reports, for each detection, the nearest source of its
reference image within a match radius (ZTF's alerts carry it as ``magnr``/``distnr``;
the protocol's optional ``ref_mag``, docs/protocol.md). It is the strongest single clue
to what a new source is: a variable star is a star that was already there, a supernova
appears where there was nothing or a galaxy. The simulator reproduces what such a
reference shows, per source and band:

* the source's steady counterpart (``lightcurves.baseline_magnitudes``: a variable's
  star at its mean, the quiescent star of a CV, flare star or microlensed source, an
  AGN's nucleus) when brighter than the reference depth;
* for explosive transients, which have none, their host galaxy's nucleus or a compact
  host inside the match radius, with a chance per class (``HOST_MATCH``: tidal
  disruptions are nuclear, superluminous supernovae prefer faint dwarf hosts) and a
  magnitude relative to the transient's peak (``HOST_OFFSET``);
* otherwise an unrelated source inside the radius by chance (``CHANCE_MATCH``).

Artefacts often sit on a reference source (residuals of a bright star's subtraction):
``BOGUS_MATCH``. A value is a magnitude, ``+inf`` where the reference has nothing (to
its depth); ``NaN`` (unknown) is for a detection whose pipeline reports no reference.

These shares are assumptions of the simulation, written down here and in
docs/season.md; the classifier is trained with a spread around them and with the
reference withheld from half its light curves (policies/classifier_training.py).
"""

from __future__ import annotations

import numpy as np

# The reference co-add's 5-sigma depth per band (g, r, i): about 20 exposures at the
# survey's single-exposure depth (observatory/depth.py), 1.5 mag deeper.
REF_DEPTH = np.array([21.8, 21.7, 21.4])
# The reference's own photometric scatter (mag).
REF_SCATTER = 0.03
# Share of each explosive class with its host's light inside the match radius.
HOST_MATCH = {"SNIa": 0.35, "SNII": 0.3, "SNIbc": 0.3, "SLSN": 0.15, "TDE": 0.8, "KN": 0.4}
# Host r magnitude = the transient's peak r + N(mean, sd); colours g-r, 0, i-r.
HOST_OFFSET = (1.0, 1.2)
HOST_COLOUR = np.array([0.7, 0.0, -0.4])
CHANCE_MATCH = 0.04  # an unrelated star or galaxy within the radius
BOGUS_MATCH = 0.3  # an artefact on a reference source
STAR_COLOUR = np.array([0.5, 0.0, -0.2])  # of an unrelated star matched by chance


def reference_magnitudes(cls_names: np.ndarray, baseline: np.ndarray, peak_r: np.ndarray,
                         depth: np.ndarray, rng: np.random.Generator,
                         host_match: dict | None = None,
                         chance: float = CHANCE_MATCH) -> np.ndarray:
    """(n, 3) reference magnitudes (``+inf``: nothing there) of n sources of classes
    ``cls_names``, with steady counterparts ``baseline`` (n, 3; ``+inf`` where none),
    r-band peaks (transients) or means ``peak_r`` (n,), and reference depths ``depth``
    (3,) or (n, 3)."""
    n = len(cls_names)
    host_match = HOST_MATCH if host_match is None else host_match
    depth = np.broadcast_to(np.asarray(depth, dtype=float), (n, 3))
    base = np.asarray(baseline, dtype=float).reshape(n, 3)
    u_host, u_chance = rng.random(n), rng.random(n)
    host_r = np.asarray(peak_r, dtype=float) + rng.normal(*HOST_OFFSET, n)
    chance_r = rng.uniform(18.0, 22.5, n)
    scatter = rng.normal(0.0, REF_SCATTER, (n, 3))
    p_host = np.array([host_match.get(str(c), 0.0) for c in cls_names])
    steady = np.isfinite(base).any(axis=1)
    host = ~steady & (u_host < p_host)
    other = ~steady & ~host & (u_chance < chance)
    out = np.full((n, 3), np.inf)
    out[steady] = base[steady]
    out[host] = host_r[host, None] + HOST_COLOUR
    out[other] = chance_r[other, None] + STAR_COLOUR
    out = out + scatter
    out[~(out <= depth)] = np.inf
    return out


def bogus_reference(n: int, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) reference magnitudes at artefacts: a star under ``BOGUS_MATCH`` of them."""
    out = np.full((n, 3), np.inf)
    on_star = rng.random(n) < BOGUS_MATCH
    out[on_star] = rng.uniform(15.0, 21.5, int(on_star.sum()))[:, None] + STAR_COLOUR
    out[~(out <= np.broadcast_to(depth, (n, 3)))] = np.inf
    return out
