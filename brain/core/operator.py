"""The operator vocabulary of the core: the typed arguments of operator actions (the
planner's tools and the operators' desk both speak it), the state an operator or the
planner may see (:class:`PlanState`), and the survey-region rule.

Every string argument has a pattern and extra keys are forbidden, so whatever a language
model writes is parsed, never trusted. The planner (brain/planner/tools.py) builds its
tool registry and validation on these; the core applies them (brain/core/braincore.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from observatory.taxonomy import CLASSES

OBJECT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$"
SITE_ID = r"^[a-z][a-z0-9]{0,7}$"
GROUP_ID = r"^[a-z][a-z0-9]{0,7}\.g[0-9]{2}$"
REASON = r"^[A-Za-z0-9 ,.'-]{0,80}$"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(Args):
    pass


class QueryObjects(Args):
    cls: Literal[(*CLASSES, "any")] = Field(
        "any", description="predicted class to list, or any")
    min_prob: float = Field(0.0, ge=0.0, le=1.0, description="least class probability")
    limit: int = Field(10, ge=1, le=100, description="at most this many objects")


class ObjectArg(Args):
    object_id: str = Field(pattern=OBJECT_ID, description="object id, e.g. o0000042")


class GroupArg(Args):
    group: str = Field(pattern=GROUP_ID, description="telescope group, e.g. xl.g03")


class SiteArg(Args):
    site: str = Field(pattern=SITE_ID, description="site id, e.g. xl")


class CloseSite(Args):
    site: str = Field(pattern=SITE_ID, description="site id, e.g. xl")
    reason: str = Field("operator", pattern=REASON, description="why, for the journal")


class SurveyRegion(Args):
    ra_min_deg: float = Field(ge=0.0, le=360.0)
    ra_max_deg: float = Field(ge=0.0, le=360.0)
    dec_min_deg: float = Field(ge=-90.0, le=90.0)
    dec_max_deg: float = Field(ge=-90.0, le=90.0)


@dataclass
class PlanState:
    """What the planner may know: the array now (``t``, unix s). Built from the running
    daemon (:meth:`brain.core.braincore.BrainCore.plan_state`) or from a simulation's output
    directory (:func:`brain.planner.plan.state_from_run`). Plain data, so it travels to the
    planner's actor and back as JSON."""

    t: float
    source: str
    sites: dict[str, dict]  # id -> name, open, safe, rule, held_closed, dark
    groups: dict[str, dict]  # name -> site, paused, phase
    objects: dict[str, dict]  # id -> ra_deg, dec_deg, n_detections, predicted_class,
    #                            p_predicted, mag (nan: unknown), note
    followups: dict[str, str] = field(default_factory=dict)  # object id -> status
    spec_left_s: dict[str, float] = field(default_factory=dict)  # site -> budget left
    region: list[float] | None = None
    summary: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PlanState:
        return cls(**d)


def region_mask(ra, dec, a) -> np.ndarray:
    """Fields inside a survey region (right ascension may wrap through 0)."""
    ra = np.asarray(ra)
    dec = np.asarray(dec)
    if a.ra_min_deg <= a.ra_max_deg:
        in_ra = (ra >= a.ra_min_deg) & (ra <= a.ra_max_deg)
    else:
        in_ra = (ra >= a.ra_min_deg) | (ra <= a.ra_max_deg)
    return in_ra & (dec >= a.dec_min_deg) & (dec <= a.dec_max_deg)
