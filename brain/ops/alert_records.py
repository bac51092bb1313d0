"""The two alert kinds as plain records (a classification, a follow-up trigger), checked on
construction, and the identifiers and times every alert format shares (docs/alerts.md)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from observatory.times import unix_to_mjd

DEFAULT_STREAM = "sitian.cn/brain"  # IVORN authority / resource


ROLES = ("observation", "prediction", "utility", "test")


SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


TAXONOMY_URI = "ivo://sitian.cn/taxonomy#"  # Why/Inference/Concept: <uri><class>


BAND_UCD = {"g": "phot.mag;em.opt.B", "r": "phot.mag;em.opt.R", "i": "phot.mag;em.opt.I"}


# The alerts ------------------------------------------------------------------------
def _finite(name: str, v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, not {v}")
    return v


def _opt(name: str, v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else _finite(name, v)


def _check_where(a) -> None:
    """Shared checks; normalises to plain floats (msgpack, Avro and XML want them)."""
    if not SAFE_ID.fullmatch(a.object_id):
        raise ValueError(f"object_id {a.object_id!r} is not [A-Za-z0-9._-]{{1,64}}")
    dec = _finite("dec_deg", a.dec_deg)
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"dec_deg {dec} outside [-90, 90]")
    object.__setattr__(a, "t", _finite("t", a.t))
    object.__setattr__(a, "ra_deg", _finite("ra_deg", a.ra_deg) % 360.0)
    object.__setattr__(a, "dec_deg", dec)
    err = _finite("pos_err_arcsec", a.pos_err_arcsec)
    if err <= 0:
        raise ValueError("pos_err_arcsec must be positive")
    object.__setattr__(a, "pos_err_arcsec", err)
    probs = {}
    for c, p in dict(a.probabilities).items():
        p = _finite(f"probability of {c}", p)
        if not -1e-9 <= p <= 1 + 1e-9:
            raise ValueError(f"probability of {c} is {p}, outside [0, 1]")
        probs[str(c)] = min(max(p, 0.0), 1.0)
    if probs and abs(sum(probs.values()) - 1.0) > 1e-3:
        raise ValueError(f"class probabilities sum to {sum(probs.values()):.4f}, not 1")
    object.__setattr__(a, "probabilities", probs)


@dataclass(frozen=True)
class ClassificationAlert:
    """A candidate's classification, as the core holds it after ``finish_classification``.

    ``t``: when the brain classified it (Unix s UTC, world time; the VOEvent's Who/Date);
    ``probabilities``: class -> probability over the taxonomy (sums to 1);
    ``n_detections``: detections associated so far (all bands); ``t_first``/``t_last``:
    first and latest detection (Unix s; ``t_last`` is the VOEvent's WhereWhen time);
    ``last_mag``: band -> latest AB magnitude in that band; ``pos_err_arcsec``: position
    error radius (default 1″; the association radius is a safe upper bound)."""

    object_id: str
    t: float
    ra_deg: float
    dec_deg: float
    probabilities: Mapping[str, float]
    n_detections: int
    t_first: float | None = None
    t_last: float | None = None
    last_mag: Mapping[str, float] = field(default_factory=dict)
    pos_err_arcsec: float = 1.0

    kind: ClassVar[str] = "classification"

    def __post_init__(self):
        _check_where(self)
        if not self.probabilities:
            raise ValueError("a classification needs class probabilities")
        if int(self.n_detections) < 0:
            raise ValueError("n_detections must be >= 0")
        object.__setattr__(self, "n_detections", int(self.n_detections))
        object.__setattr__(self, "t_first", _opt("t_first", self.t_first))
        object.__setattr__(self, "t_last", _opt("t_last", self.t_last))
        object.__setattr__(self, "last_mag", {str(b): _finite(f"last_mag[{b}]", m)
                                              for b, m in dict(self.last_mag).items()
                                              if m is not None and math.isfinite(m)})

    @property
    def predicted_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def p_predicted(self) -> float:
        return self.probabilities[self.predicted_class]

    @property
    def t_obs(self) -> float:
        return self.t_last if self.t_last is not None else self.t

    @property
    def local_id(self) -> str:
        return f"cls/{self.object_id}/{iso_stamp(self.t)}"


@dataclass(frozen=True)
class FollowupAlert:
    """A spectrum the follow-up manager commanded (its ``spectrum`` command and record).

    ``t``: when it was commanded (Unix s UTC, world time; Who/Date and WhereWhen time);
    ``telescope``: the spectroscopic telescope's device id (``xl.spec``); ``mag``: the
    latest AB magnitude the exposure was planned for; ``exposure_s``; ``t_end``: planned
    end (Unix s); ``priority``: the target's expected science reward when the caller has
    it; ``probabilities``: its class probabilities when known; ``classification_ivorn``:
    the classification alert it follows (:class:`AlertSink` fills it in when it sent
    one for the object)."""

    target_id: str
    object_id: str
    t: float
    ra_deg: float
    dec_deg: float
    telescope: str
    predicted_class: str
    p_predicted: float
    mag: float | None = None
    exposure_s: float | None = None
    t_end: float | None = None
    priority: float | None = None
    probabilities: Mapping[str, float] = field(default_factory=dict)
    classification_ivorn: str | None = None
    pos_err_arcsec: float = 1.0

    kind: ClassVar[str] = "followup"

    def __post_init__(self):
        _check_where(self)
        for name in ("target_id", "telescope"):
            if not SAFE_ID.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not [A-Za-z0-9._-]{{1,64}}")
        if not self.predicted_class:
            raise ValueError("predicted_class is empty")
        p = _finite("p_predicted", self.p_predicted)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_predicted {p} outside [0, 1]")
        object.__setattr__(self, "p_predicted", p)
        for name in ("mag", "exposure_s", "t_end", "priority"):
            object.__setattr__(self, name, _opt(name, getattr(self, name)))

    @property
    def site(self) -> str:
        return self.telescope.split(".", 1)[0]

    @property
    def t_obs(self) -> float:
        return self.t

    @property
    def local_id(self) -> str:
        return f"fu/{self.target_id}/{iso_stamp(self.t)}"


Alert = ClassificationAlert | FollowupAlert


def ivorn(alert: Alert, stream: str = DEFAULT_STREAM) -> str:
    """``ivo://<authority>/<resource>#<kind>/<id>/<UTC stamp>``, unique per alert."""
    return f"ivo://{stream}#{alert.local_id}"


def iso_stamp(t_unix: float) -> str:
    ms = round(t_unix * 1000)
    return (datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y%m%dT%H%M%S")
            + f".{ms % 1000:03d}")


def utc_datetime(t_unix: float) -> datetime:
    return datetime.fromtimestamp(t_unix, UTC)


def mjd_of(t_unix: float) -> float:
    return float(unix_to_mjd(t_unix))
