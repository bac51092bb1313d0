"""The LLM planner: an operator's request -> typed, validated tool calls.

Two constrained generations make the most of a small model: first the tool, chosen by
constrained decoding over the tool names (or ``none``); then that tool's arguments, as
JSON under its schema (tools without arguments skip this). The default model is tuned
for short prompts holding just the request (:mod:`brain.planner.tuning`); any other model
gets the tools' descriptions and the most similar worked examples instead. Where the
request names sites, groups or objects, the argument grammar offers only those (the
model cannot invent a target); data from the store (an object's class, its operator
note) enters the prompt only as a quoted JSON block that the prompt declares to be
data, and the validator independently demands that an action's target be named by the
operator. Every answer is parsed by pydantic and validated (:mod:`brain.planner.tools`) before
anything can run; actions that move hardware run only with approval.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from brain.core.operator import PlanState
from brain.planner.adapter import TUNE_FORMAT, tuned_format
from brain.planner.prompts import (
    CHOOSE_SYSTEM,
    CLASS_NAMES,
    EXAMPLES,
    FILL_SYSTEM,
    SHORTLIST,
    SHOTS,
    quote_data,
    tool_label,
    tuned_choose_messages,
    tuned_fill_messages,
)
from brain.planner.tools import NONE_TOOL, TOOLS, Validator, args_schema, parse_call


@dataclass
class PlanResult:
    request: str
    calls: list[dict] = field(default_factory=list)
    valid: bool = False
    problems: list[str] = field(default_factory=list)
    executed: bool = False
    results: list = field(default_factory=list)
    latency_s: float = 0.0

    def to_json(self) -> dict:
        return {"request": self.request, "calls": self.calls, "valid": self.valid,
                "problems": self.problems, "executed": self.executed,
                "results": self.results}


class Planner:
    """Plans with an :class:`brain.planner.engine.Engine` against a :class:`PlanState`."""

    def __init__(self, config, engine, examples=None):
        self.config = config
        self.examples = list(EXAMPLES if examples is None else examples)
        self.engine = engine
        self.validator = Validator(config)
        tools = "\n".join(f"{n}: {t.description}" for n, t in TOOLS.items())
        self._choose_head = [{"role": "system", "content": CHOOSE_SYSTEM.format(
            tools=tools, classes=CLASS_NAMES)}]
        self._shapes = [_shape(req, config) for req, _, _ in self.examples]
        self.site_text = ", ".join(f"{s.id} ({s.name})" for s in config.sites)

        # a model tuned for the planner's short prompts gets them; any other the
        # few-shot ones
        self.tuned = engine is not None and tuned_format(
            getattr(engine, "model", "")) == TUNE_FORMAT

    # Prompts -----------------------------------------------------------------------
    def _choose_messages(self, request: str) -> tuple[list[dict], list[str]]:
        """Tools and descriptions, then the examples most like the request (by shape:
        ids and numbers masked), most similar last, then the request; and the labels the
        model may answer: the tools of the closest examples (a retrieval shortlist) and
        the no-tool answer."""
        if self.tuned:
            return tuned_choose_messages(request), [tool_label(t) for t in (*TOOLS, NONE_TOOL)]
        mine = _shape(request, self.config)
        score = [len(mine & s) / max(1, len(mine | s)) for s in self._shapes]
        ranked = sorted(range(len(self.examples)), key=lambda k: (-score[k], k))
        msgs = list(self._choose_head)
        for k in reversed(ranked[:SHOTS]):
            req, tool, _ = self.examples[k]
            msgs += [{"role": "user", "content": req},
                     {"role": "assistant", "content": tool_label(tool)}]
        allowed = {self.examples[k][1] for k in ranked[:SHORTLIST]} | {NONE_TOOL}
        labels = [tool_label(t) for t in (*TOOLS, NONE_TOOL) if t in allowed]
        return [*msgs, {"role": "user", "content": request}], labels

    def _mentioned(self, request: str, state: PlanState) -> dict[str, list[str]]:
        low = request.lower()
        words = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", request))
        words |= {w.rstrip(".,") for w in words}
        sites = [s for s in sorted(state.sites)
                 if re.search(r"(?<![a-z0-9])" + re.escape(s) + r"(?![a-z0-9])", low)
                 or any(a.lower() in low for a in self.validator.aliases.get(s, []))]
        return {"site": sites,
                "group": sorted(g for g in state.groups if g in low),
                "object_id": sorted(w for w in words if w in state.objects)}

    def _store_data(self, request: str, state: PlanState) -> dict | None:
        named = self._mentioned(request, state)["object_id"]
        return {o: {k: state.objects[o].get(k) for k in
                    ("predicted_class", "p_predicted", "note")} for o in named} or None

    def _fill_messages(self, request: str, tool: str, state: PlanState) -> list[dict]:
        if self.tuned:
            return tuned_fill_messages(request, tool, self._store_data(request, state))
        msgs = [{"role": "system", "content": FILL_SYSTEM.format(
            tool=tool, desc=TOOLS[tool].description, sites=self.site_text,
            classes=CLASS_NAMES)}]
        for req, t, args in self.examples:
            if t == tool:
                msgs += [{"role": "user", "content": req},
                         {"role": "assistant", "content": json.dumps(args,
                                                                     separators=(",", ":"))}]
        data = self._store_data(request, state)
        content = request
        if data:  # what the store knows of the objects named, quoted as data
            content += "\n" + quote_data(data)
        msgs.append({"role": "user", "content": content})
        return msgs

    def _schema(self, request: str, tool: str, state: PlanState) -> dict:
        schema = args_schema(tool, state)
        props = schema.get("properties", {})
        named = self._mentioned(request, state)
        for key in ("site", "group", "object_id"):
            if key in props and named[key]:
                props[key] = {"type": "string", "enum": named[key]}
        return schema

    # Planning ----------------------------------------------------------------------
    def plan_many(self, requests: list[str], state: PlanState) -> list[PlanResult]:
        """Plans for many requests at once (one batched generation per stage)."""
        t0 = time.perf_counter()
        results = [PlanResult(r) for r in requests]
        bad = [i for i, r in enumerate(requests) if not request_ok(r)]
        for i in bad:
            results[i].problems = ["the request is empty, too long or holds control "
                                   "characters"]
        suspect = {i: why for i, r in enumerate(requests) if (why := instruction_like(r))}
        todo = [i for i in range(len(requests)) if i not in bad]
        prompts = [self._choose_messages(requests[i]) for i in todo]
        tools = self.engine.choose([m for m, _ in prompts],
                                   [c for _, c in prompts]) if todo else []
        tools = [NONE_TOOL if t == tool_label(NONE_TOOL) else t for t in tools]
        fill = [(i, t) for i, t in zip(todo, tools, strict=True)
                if t in TOOLS and TOOLS[t].args.model_fields]
        for i, t in zip(todo, tools, strict=True):
            if t not in TOOLS:
                results[i].problems = ["the request matches no planner tool"]
            elif not TOOLS[t].args.model_fields:  # nothing to fill: no generation
                results[i].calls = [{"tool": t, "args": {}}]
                results[i].problems = self.validator.check(t, TOOLS[t].args(), state,
                                                           requests[i])
        texts = self.engine.fill(
            [self._fill_messages(requests[i], t, state) for i, t in fill],
            [self._schema(requests[i], t, state) for i, t in fill]) if fill else []
        for (i, tool), text in zip(fill, texts, strict=True):
            res = results[i]
            try:
                raw = json.loads(text)
            except ValueError:
                res.problems = [f"{tool}: the model's arguments are not JSON"]
                res.calls = [{"tool": tool, "args": None}]
                continue
            args, err = parse_call(tool, raw if isinstance(raw, dict) else {})
            res.calls = [{"tool": tool, "args": raw}]
            if err:
                res.problems = [err]
                continue
            res.calls = [{"tool": tool, "args": args.model_dump()}]
            res.problems = self.validator.check(tool, args, state, requests[i])
        for i, why in suspect.items():
            results[i].problems.append(why)
        for res in results:
            res.valid = bool(res.calls) and not res.problems
            res.latency_s = (time.perf_counter() - t0)
        return results

    def plan(self, request: str, state: PlanState) -> PlanResult:
        return self.plan_many([request], state)[0]


def _shape(text: str, config) -> frozenset[str]:
    """A request's words with its particulars masked (object ids, groups, sites,
    numbers), for choosing similar examples."""
    low = text.lower()
    low = re.sub(r"\b[a-z]{1,8}\.g\d{2}\b", " GROUP ", low)
    low = re.sub(r"\bo\d{3,}\b", " OBJECT ", low)
    low = re.sub(r"-?\d+(\.\d+)?", " NUMBER ", low)
    for s in config.sites:
        for w in {s.id, s.name.lower(), s.name.lower().split("-")[0]}:
            low = re.sub(r"(?<![a-z0-9])" + re.escape(w) + r"(?![a-z0-9])", " SITE ", low)
    return frozenset(re.findall(r"[a-z]+|[A-Z]+", low))


_INJECTION = re.compile(
    r"(?i)(</?data>|\b(system|assistant)\s*(prompt|override)?\s*[:\]]|\[\s*system\b|"
    r"\bignore\b.{0,40}\b(rules|instructions|limits|safety)\b|"
    r"\b(safety|limits?)\b.{0,30}\b(off|disabled|override)\b)")


def instruction_like(request: str) -> str | None:
    """A reason when the request holds text that tries to steer the planner (role
    markers, "ignore the rules", "safety off"): most often pasted from somewhere else.
    Such a plan is shown but never valid, so nothing of it runs."""
    m = _INJECTION.search(request)
    if m is None:
        return None
    return (f"the request holds instruction-like text ({m.group(0)[:30]!r}): refused as a "
            "possible injection; rephrase it as a plain request")


def request_ok(request: str) -> bool:
    return (isinstance(request, str) and 0 < len(request.strip()) <= 1000
            and not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", request))


# ---------------------------------------------------------------------------------------
# Carrying out a plan


def answer(tool: str, args: dict, state: PlanState, validator: Validator):
    """The result of a read-only tool (it changes nothing, so it needs no approval)."""
    if tool == "query_objects":
        rows = [dict(object_id=k, **{c: v.get(c) for c in
                                     ("predicted_class", "p_predicted", "n_detections",
                                      "ra_deg", "dec_deg")})
                for k, v in state.objects.items()
                if (args["cls"] == "any" or v.get("predicted_class") == args["cls"])
                and (v.get("p_predicted") or 0.0) >= args["min_prob"]]
        rows.sort(key=lambda r: (-(r["p_predicted"] or 0.0), r["object_id"]))
        return rows[:args["limit"]]
    if tool == "check_visibility":
        obj = state.objects[args["object_id"]]
        return [validator.visibility(s, obj["ra_deg"], obj["dec_deg"], state.t)
                for s in sorted(state.sites)]
    if tool == "summarize_night":
        return state.summary
    if tool == "get_status":
        return {"t": state.t, "sites": state.sites,
                "paused_groups": sorted(g for g, v in state.groups.items() if v["paused"]),
                "region": state.region}
    raise ValueError(f"{tool} is not a read-only tool")


def carry_out(result: PlanResult, state: PlanState, validator: Validator,
              execute: bool, actuator=None) -> PlanResult:
    """Answer the read-only calls of a valid plan; with ``execute`` and an
    ``actuator(tool, args) -> str | None`` (a refusal reason), hand it the actions."""
    if not result.valid:
        return result
    actions = [c for c in result.calls if TOOLS[c["tool"]].moves_hardware]
    for c in result.calls:
        if not TOOLS[c["tool"]].moves_hardware:
            result.results.append(answer(c["tool"], c["args"], state, validator))
    if not actions:
        result.executed = True  # nothing to approve: the answer is the execution
        return result
    if not execute:
        result.results.append({"approval": "needed: run again with --execute"})
        return result
    if actuator is None:
        result.problems.append("no running daemon to carry out actions (a --state plan "
                               "is never executed)")
        result.valid = False
        return result
    for c in actions:
        refusal = actuator(c["tool"], c["args"])
        if refusal:
            result.problems.append(refusal)
            return result
        result.results.append({"done": c["tool"]})
    result.executed = True
    return result


# ---------------------------------------------------------------------------------------
# The state at the end of a simulation (``brain ask --state DIR``)
