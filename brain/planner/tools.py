"""The LLM planner's tools (docs/contracts.md): typed arguments, validation, execution.

A tool call is ``{"tool": name, "args": {...}}``. Its arguments are a pydantic model
(every string has a pattern, extra keys are forbidden), so whatever a language model
writes is parsed, never trusted. Each call is then validated against the state it would
act on (:class:`PlanState`): devices, objects and sites must exist, hardware may move
only where the sun, the horizon, the weather and the spectroscopic budget allow, and an
action's targets must be named by the operator's own request (so nothing read from the
data, an object's name or note, can choose what moves). A call with a problem is not
executed; nothing that moves hardware runs without the operator's approval.

Visibility uses the constraint code of the scheduler and the follow-up manager
(``observatory.visibility.target_alt_deg``, the night's ephemerides, the config's
limits and the follow-up altitude margin).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from brain.core.operator import (
    Args,
    CloseSite,
    GroupArg,
    NoArgs,
    ObjectArg,
    PlanState,
    QueryObjects,
    SiteArg,
    SurveyRegion,
    region_mask,
)
from observatory.ephemeris import NightEphemeris, night_date
from observatory.sky import FieldGrid
from observatory.spectra import exposure_s
from observatory.visibility import NightCache, target_alt_deg


@dataclass(frozen=True)
class Tool:
    name: str
    args: type[Args]
    description: str
    moves_hardware: bool  # needs approval (--execute / the approval endpoint)
    grounded: tuple[str, ...] = ()  # arguments the request must name


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("query_objects", QueryObjects,
         "list transient candidates, optionally of one predicted class", False),
    Tool("check_visibility", ObjectArg,
         "when tonight an object is observable from each site", False),
    Tool("request_followup", ObjectArg,
         "take a spectrum of an object with a 4-m telescope", True, ("object_id",)),
    Tool("cancel_followup", ObjectArg,
         "withdraw an object from spectroscopic follow-up", True, ("object_id",)),
    Tool("pause_group", GroupArg,
         "stop giving new survey fields to a telescope group", True, ("group",)),
    Tool("resume_group", GroupArg,
         "let a paused telescope group survey again", True, ("group",)),
    Tool("set_survey_region", SurveyRegion,
         "limit the survey to a box of right ascension and declination", True),
    Tool("close_site", CloseSite,
         "close the domes of every telescope at a site and keep them closed", True,
         ("site",)),
    Tool("open_site", SiteArg,
         "allow a site to open again (it opens only when safe and dark)", True, ("site",)),
    Tool("summarize_night", NoArgs,
         "summary of the night so far: survey, transients, spectra", False),
    Tool("get_status", NoArgs,
         "state of the sites, weather and telescope groups now", False),
)}
NONE_TOOL = "none"  # the planner's answer to a request that needs no tool
# An action runs only when the operator's words ask for that kind of action: a wrong tool
# picked by the model (e.g. closing a site when asked to open it) stays a plan.
ACTION_WORDS = {
    "close_site": r"\b(close|closed|closing|shut|shutter|keep\b.*\bclosed)",
    "open_site": r"\b(open|reopen|opening)\b",
    "pause_group": r"\b(pause|stop|hold|halt|suspend|out of|take\b.*\bout|don't|do not)",
    "resume_group": r"\b(resume|back|again|restart|return|unpause|re-?enable)",
    "request_followup": r"(spectr|spec\b|follow|4-m|observe|queue|book)",
    "cancel_followup": r"\b(cancel|withdraw|drop|remove|forget|no longer|don't need|"
                       r"do not need|off)\b",
    "set_survey_region": r"(survey|region|restrict|limit|only|\bra\b|\bdec)",
}


def args_schema(tool: str, state: PlanState | None = None) -> dict:
    """The JSON schema a language model fills for ``tool``'s arguments; with a state,
    site and group fields are narrowed to the array's own ids."""
    schema = TOOLS[tool].args.model_json_schema()
    props = schema.get("properties", {})
    schema["additionalProperties"] = False
    schema["required"] = sorted(props)  # a small model writes every field
    if state is not None:
        if "site" in props:
            props["site"] = {"type": "string", "enum": sorted(state.sites)}
        if "group" in props:
            props["group"] = {"type": "string", "enum": sorted(state.groups)}
    for p in props.values():
        p.pop("default", None)
        p.pop("title", None)
        p.pop("description", None)
    schema.pop("title", None)
    schema.pop("description", None)
    return schema


def parse_call(tool: str, args: dict) -> tuple[Args | None, str | None]:
    """The typed arguments, or a one-line reason they do not parse."""
    if tool not in TOOLS:
        return None, f"unknown tool {tool!r}"
    try:
        return TOOLS[tool].args.model_validate(args), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "args"
        return None, f"{tool}: {where}: {err['msg']}"


# ---------------------------------------------------------------------------------------
# The state a plan is validated against


def site_aliases(config) -> dict[str, list[str]]:
    """The names an operator may use for each site: its name and the name's first word
    (``Muztagh`` for ``Muztagh-ata``)."""
    return {s.id: sorted({s.name, s.name.split("-")[0].split(" ")[0]})
            for s in config.sites}


def _mentions(request: str, value: str, aliases: dict[str, list[str]]) -> bool:
    words = [value, *aliases.get(value, [])]
    low = request.lower()
    return any(re.search(r"(?<![a-z0-9])" + re.escape(w.lower()) + r"(?![a-z0-9])", low)
               for w in words)


class Validator:
    """Checks tool calls against a :class:`PlanState` and the array's config."""

    def __init__(self, config, nights: NightCache | None = None):
        """``nights``: the core's night cache, when there is a core (the daemon): the
        validator then plans with the same ephemerides and field grid, computed once."""
        self.config = config
        self.shared_nights = nights
        self._nights: dict[str, object] = {}
        self.site_names = {s.id: s.name for s in config.sites}
        self.aliases = site_aliases(config)
        self.specs = {sp.site: sp for sp in config.spectrographs}
        self.min_alt = config.limits.min_alt_deg + config.followup.alt_margin_deg

    def night(self, t: float):
        date = night_date(self.config, t)
        if self.shared_nights is not None:
            return self.shared_nights.get(date)[0]
        if date not in self._nights:
            self._nights = {date: NightEphemeris.compute(self.config, date)}
        return self._nights[date]

    # Sky -------------------------------------------------------------------------
    def dark_left(self, site: str, t: float) -> tuple[float, float] | None:
        """The dark interval at ``site`` that contains ``t`` or comes next tonight."""
        for t0, t1 in self.night(t).dark[site]:
            if t1 > t:
                return max(t0, t), t1
        return None

    def visibility(self, site: str, ra: float, dec: float, t: float,
                   step_s: float = 300.0) -> dict:
        """When tonight (from ``t``) a target is above the altitude limit plus the
        follow-up margin while the site is dark: ``{"from", "until", "alt_now_deg"}``
        (unix s; None when never)."""
        eph = self.night(t).sites[site]
        alt_now = float(np.asarray(_alt(eph, ra, dec, t)))
        span = self.dark_left(site, t)
        out = {"site": site, "alt_now_deg": round(alt_now, 1), "from": None, "until": None}
        if span is None:
            return out
        ts = np.arange(span[0], span[1] + 1e-6, step_s)
        ok = np.asarray(_alt(eph, ra, dec, ts)) >= self.min_alt
        if ok.any():
            k = np.flatnonzero(ok)
            out["from"], out["until"] = float(ts[k[0]]), float(ts[k[-1]])
        return out

    # Calls -----------------------------------------------------------------------
    def check(self, tool: str, args: Args, state: PlanState, request: str | None
              ) -> list[str]:
        """Problems with one parsed call (empty: valid). ``request``: the operator's
        words, which must name an action's targets (None: checked before, e.g. the
        daemon's re-check of an approved action against its newest state)."""
        spec = TOOLS[tool]
        problems: list[str] = []
        a = args.model_dump()
        if "site" in a and a["site"] not in state.sites:
            return [f"unknown site {a['site']!r} (sites: {', '.join(sorted(state.sites))})"]
        if "group" in a and a["group"] not in state.groups:
            return [f"unknown group {a['group']!r}"]
        if "object_id" in a and a["object_id"] not in state.objects:
            return [f"unknown object {a['object_id']!r}"]
        for key in spec.grounded if request is not None else ():
            if not _mentions(request, a[key], self.aliases):
                problems.append(f"{tool}: {key} {a[key]!r} is not named in the request "
                                "(an action's target must come from the operator)")
        if request is not None and tool in ACTION_WORDS and not re.search(
                ACTION_WORDS[tool], request.lower()):
            problems.append(f"{tool}: the request does not ask for this action (a small "
                            "model may pick the wrong one; nothing runs unasked)")
        if tool == "set_survey_region" and request is not None:
            said = {float(x) for x in re.findall(r"[-+]?\d+(?:\.\d+)?", request)}
            for key, v in a.items():
                if not any(abs(v - x) < 1e-6 for x in said):
                    problems.append(f"set_survey_region: {key} {v:g} is not a number of "
                                    "the request")
        check = getattr(self, f"_check_{tool}", None)
        if check is not None:
            problems += check(args, state)
        return problems

    def _check_request_followup(self, a: ObjectArg, state: PlanState) -> list[str]:
        oid = a.object_id
        obj = state.objects[oid]
        status = state.followups.get(oid)
        if status in ("requested", "taken", "done"):
            return [f"{oid} already has a spectrum {status}"]
        if not self.specs:
            return ["the array has no spectroscopic telescope"]
        mag = obj.get("mag")
        mag = float(mag) if mag is not None else math.nan
        problems = []
        faint = max(s.label_limit_mag for s in self.specs.values()) \
            + self.config.followup.faint_margin_mag
        if mag > faint:
            problems.append(f"{oid} at {mag:.1f} mag is fainter than the spectroscopic "
                            f"limit {faint:.1f}")

        usable, why = [], []
        for site, sp in self.specs.items():
            st = state.sites.get(site, {})
            if st.get("held_closed"):
                why.append(f"{site} closed by the operator")
                continue
            vis = self.visibility(site, obj["ra_deg"], obj["dec_deg"], state.t)
            if vis["from"] is None:
                why.append(f"{site}: " + ("no dark time left tonight"
                                          if self.dark_left(site, state.t) is None else
                                          f"below {self.min_alt:.0f} deg altitude while dark"))
                continue
            # Unknown brightness: assume the longest exposure (missing data is unsafe).
            need = float(exposure_s(sp, mag)) if math.isfinite(mag) else sp.max_exposure_s
            left = state.spec_left_s.get(site, math.inf)
            if left < need:
                why.append(f"{site}: budget {left / 60:.0f} min left, needs {need / 60:.0f}")
                continue
            usable.append(site)
        if not usable:
            problems.append(f"{oid} cannot be observed tonight: " + "; ".join(why))
        return problems

    def _check_cancel_followup(self, a: ObjectArg, state: PlanState) -> list[str]:
        status = state.followups.get(a.object_id)
        if status != "requested":
            return [f"{a.object_id} has no pending follow-up request to cancel"
                    + (f" (its spectrum is {status})" if status else "")]
        return []

    def _check_pause_group(self, a: GroupArg, state: PlanState) -> list[str]:
        return [f"{a.group} is already paused"] if state.groups[a.group]["paused"] else []

    def _check_resume_group(self, a: GroupArg, state: PlanState) -> list[str]:
        return [] if state.groups[a.group]["paused"] else [f"{a.group} is not paused"]

    def _check_open_site(self, a: SiteArg, state: PlanState) -> list[str]:
        site = state.sites[a.site]
        problems = []
        if site["open"] and not site.get("held_closed"):
            problems.append(f"{a.site} is already open")
        eph = self.night(state.t).sites[a.site]
        sun = float(eph.sun_alt(state.t))
        if not eph.is_dark(state.t, self.config.limits.max_sun_alt_deg):
            problems.append(f"sun at {sun:+.1f} deg at {a.site} (limit "
                            f"{self.config.limits.max_sun_alt_deg:+.0f} deg): not dark")
        if not site.get("safe"):
            problems.append(f"weather unsafe at {a.site}: {site.get('rule', 'unknown')}")
        return problems

    def _check_set_survey_region(self, a: SurveyRegion, state: PlanState) -> list[str]:
        if a.dec_min_deg >= a.dec_max_deg:
            return ["dec_min_deg must be below dec_max_deg"]
        if a.ra_min_deg == a.ra_max_deg:
            return ["the right ascension range is empty"]
        grid = self.shared_nights.grid if self.shared_nights is not None else _grid(self.config)
        inside = region_mask(grid.ra_deg, grid.dec_deg, a)
        if not inside.any():
            return ["the region holds no survey field"]
        t = state.t
        seen = False
        for site in state.sites:
            span = self.dark_left(site, t)
            if span is None:
                continue
            eph = self.night(t).sites[site]
            ts = np.linspace(span[0], span[1], 12)
            alt = _alt(eph, grid.ra_deg[inside][:, None], grid.dec_deg[inside][:, None], ts)
            if (np.asarray(alt) >= self.config.limits.min_alt_deg).any():
                seen = True
                break
        return [] if seen else ["no field of the region rises above the altitude limit "
                                "from any site in tonight's dark time"]


_GRIDS: dict[tuple, object] = {}


def _grid(config):
    key = (config.camera.fov_deg2, config.survey.ring_fit)
    if key not in _GRIDS:
        _GRIDS[key] = FieldGrid.tile(*key)
    return _GRIDS[key]


def _alt(eph, ra, dec, t):
    return target_alt_deg(eph, ra, dec, t)
