"""The spectroscopic telescopes: one 4-m class telescope per site (``{site}.spec``).

A spectrum of a target at (RA, Dec) takes a slew of the big mount (slower than the
survey telescopes' 1-m mounts), the acquisition overhead and the exposure that the brain
asks for (docs/contracts.md: clamp(900 s x 10^(0.4 (m - 19)), 300, 3600) + 300 s).
The telescope refuses a target below its altitude limit at the start or the end of the
exposure and a command while it is closed or busy. When the shutter closes, the
spectrum is reduced against the simulator's truth: the source nearest the pointing
(within ``MATCH_ARCSEC``) is identified when it was brighter than the label limit and
the exposure was at least half of what its true magnitude needs; a low signal-to-noise
spectrum is misclassified with a small probability (2 % at the limit minus 1.5 mag,
rising to 12 % at the limit). Bogus candidates (artefacts) have no source: no label.

The brain never sees the truth: the reply carries the label (or none) and the phase
("before peak"); the truth of each spectrum is logged by the world for the run's files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from observatory.arrayconfig import ArrayConfig, Spectrograph
from observatory.mount import move_time_s
from observatory.sky import separation_deg, unit_vectors
from observatory.spectra import SPEC_MOUNT, exposure_s
from observatory.taxonomy import CLASSES
from observatory.visibility import target_alt_deg
from simulator.world import Reply

MATCH_ARCSEC = 3.0
DAY_S = 86400.0

_TREES: dict[int, tuple[object, cKDTree]] = {}


def source_tree(population) -> cKDTree | None:
    """k-d tree of a population's positions, built once per population object (replays
    and training episodes reuse the same sky many times)."""
    if population is None or not population.size:
        return None
    hit = _TREES.get(id(population))
    if hit is None or hit[0] is not population:
        if len(_TREES) > 16:
            _TREES.clear()
        hit = _TREES[id(population)] = (population, cKDTree(
            unit_vectors(population.ra_deg, population.dec_deg)))
    return hit[1]


@dataclass(slots=True)
class SpecTelescope:
    device: str
    site: str
    spec: Spectrograph
    ra_deg: float | None = None  # None: parked at the zenith
    dec_deg: float | None = None
    is_open: bool = False
    busy_until: float = -math.inf
    generation: int = 0
    current: dict | None = None


@dataclass
class Spectrographs:
    """Every site's spectroscopic telescope, against one population (the truth)."""

    config: ArrayConfig
    population: object | None
    seed: int
    min_alt_deg: float = 30.0
    units: dict[str, SpecTelescope] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)  # one entry per finished spectrum
    aborted: int = 0

    def __post_init__(self):
        self.min_alt_deg = self.config.limits.min_alt_deg
        for s in self.config.spectrographs:
            dev = f"{s.site}.spec"
            self.units[dev] = SpecTelescope(dev, s.site, s)
        self._tree = source_tree(self.population)
        self._chord = 2 * math.sin(math.radians(MATCH_ARCSEC / 3600) / 2)
        self.sky = None

    def begin_night(self, sky) -> None:
        self.sky = sky

    def __contains__(self, device: str) -> bool:
        return device in self.units

    # Commands ------------------------------------------------------------------
    def execute(self, device, name, args, cmd_id, t):
        reply = self._execute(device, name, args, cmd_id, t)
        if device in self.units:
            reply.generation = self.units[device].generation
        return reply

    def _execute(self, device, name, args, cmd_id, t):
        tel = self.units.get(device)
        if tel is None:
            return Reply(t, device, cmd_id, False, code="unknown_device", message=device)
        if name in ("open", "close", "park", "abort", "status"):
            if name != "open" and name != "status":
                self._abort(tel, t)
            if name == "open":
                tel.is_open = True
            elif name == "close":
                tel.is_open = False
            elif name == "park":
                tel.ra_deg = tel.dec_deg = None
            state = ("closed" if not tel.is_open else "busy" if t < tel.busy_until
                     else "idle")
            return Reply(t, device, cmd_id, True, {"state": state})
        if name != "spectrum":
            return Reply(t, device, cmd_id, False, code="unknown_command", message=name)
        if t < tel.busy_until:
            return Reply(t, device, cmd_id, False, code="busy", message="telescope busy")
        if not tel.is_open:
            return Reply(t, device, cmd_id, False, code="device_fault", message="closed")
        try:
            ra, dec = float(args["ra_deg"]), float(args["dec_deg"])
            seconds = float(args["seconds"])
        except (KeyError, TypeError, ValueError):
            return Reply(t, device, cmd_id, False, code="bad_args",
                         message="spectrum needs ra_deg, dec_deg and seconds")
        if not (0 <= ra < 360 and -90 <= dec <= 90 and 0 < seconds <= 4 * 3600):
            return Reply(t, device, cmd_id, False, code="bad_args", message="out of range")
        t_start, t_end = self.plan(tel, ra, dec, seconds, t)
        eph = self.sky.night.sites[tel.site]
        if min(target_alt_deg(eph, ra, dec, t_start), target_alt_deg(eph, ra, dec, t_end)) \
                < self.min_alt_deg:
            return Reply(t, device, cmd_id, False, code="limit",
                         message="target below the altitude limit")
        tel.ra_deg, tel.dec_deg = ra, dec
        tel.busy_until = t_end
        tel.current = {"args": dict(args), "t_start": t_start, "t_end": t_end,
                       "t_cmd": t}
        result = self._reduce(tel, ra, dec, seconds, t_start, t_end, args)
        return Reply(t_end, device, cmd_id, True, result)

    def plan(self, tel: SpecTelescope, ra: float, dec: float, seconds: float, t: float):
        """(t_start, t_end) of the science exposure if commanded at ``t``."""
        if tel.ra_deg is None:
            eph = self.sky.night.sites[tel.site]
            ra0, dec0 = float(eph.lst_deg(t)), eph.site.lat_deg
        else:
            ra0, dec0 = tel.ra_deg, tel.dec_deg
        move = float(move_time_s(separation_deg(ra0, dec0, ra, dec), SPEC_MOUNT))
        t_start = t + move + tel.spec.acquisition_s
        return t_start, t_start + seconds

    def _reduce(self, tel, ra, dec, seconds, t_start, t_end, args) -> dict:
        truth, true_mag = -1, math.inf
        if self._tree is not None:
            d, i = self._tree.query(unit_vectors(np.array([ra]), np.array([dec]))[0],
                                    distance_upper_bound=self._chord)
            if np.isfinite(d):
                truth = int(i)
                true_mag = float(self.population.magnitudes(np.array([truth]),
                                                            0.5 * (t_start + t_end), 1)[0])
        label, true_class, before_peak = None, None, False
        if truth >= 0:
            true_class = CLASSES[int(self.population.cls[truth])]
            peak = float(self.population.peak_unix(np.array([truth]))[0])
            before_peak = bool(np.isfinite(peak) and t_start < peak)
            need = float(exposure_s(tel.spec, true_mag)) if np.isfinite(true_mag) else math.inf
            if true_mag <= tel.spec.label_limit_mag and seconds >= 0.5 * need:
                rng = np.random.default_rng([self.seed, 0x5BEC, truth, int(t_start)])
                p_wrong = 0.02 + 0.10 * float(np.clip(
                    (true_mag - (tel.spec.label_limit_mag - 1.5)) / 1.5, 0, 1))
                label = true_class
                if rng.random() < p_wrong:
                    others = [c for c in CLASSES if c != true_class]
                    label = others[int(rng.integers(len(others)))]
        # The phase of a labelled transient is read from its spectrum (line widths and
        # velocities): the brain learns "before peak" only with a label.
        result = {"target_id": args.get("target_id"), "object_id": args.get("object_id"),
                  "t_start": t_start, "t_end": t_end, "label": label,
                  "before_peak": bool(before_peak and label is not None)}
        result["_truth"] = {"source": truth, "true_class": true_class,
                            "true_mag": true_mag, "before_peak": before_peak}
        return result

    def _abort(self, tel: SpecTelescope, t: float) -> None:
        if t < tel.busy_until:
            tel.generation += 1  # the pending DONE is stale: the spectrum is lost
            if tel.current is not None:
                self.aborted += 1
            tel.busy_until = t
        tel.current = None

    def is_current(self, reply) -> bool:
        return reply.generation == self.units[reply.device].generation

    def complete(self, reply) -> dict | None:
        """A current DONE was delivered: the spectrum enters the log (with its truth)."""
        truth = reply.result.pop("_truth", None)
        tel = self.units[reply.device]
        tel.current = None
        if truth is None:
            return None
        entry = {"telescope": reply.device, **{k: v for k, v in reply.result.items()},
                 **truth}
        self.log.append(entry)
        return entry
