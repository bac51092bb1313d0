"""The operators' HTTP API (Ray Serve) and the planner's hosting.

Three parts, all on the daemon's Ray (local, or a cluster joined by address):

* ``OperatorDesk`` (a named actor): the daemon pushes its :class:`PlanState` there every
  few seconds and takes approved actions from it; it holds nothing that a restart would
  lose for good (the daemon pushes the state again, and an action that was not yet taken
  is reported as not executed, never silently dropped into the void).
* ``PlannerDeployment`` (a Serve deployment, restarted by Serve): the vLLM engine and
  the planner. On a cluster, ``num_gpus`` in its actor options lands it on a GPU node.
* ``Api`` (the Serve ingress, FastAPI, bound to 127.0.0.1 by default):
  ``POST /ask {"request", "execute"}`` plans (and with approval executes),
  ``POST /approve {"request", "calls"}`` executes a plan shown earlier after validating
  it again against the current state, ``GET /objects``, ``GET /status``.

Every action goes through the same path as the scheduler's commands: the daemon turns it
into an ``Operator`` event for the core, whose commands pass the safety guard and the
journal like any other.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

from pydantic import BaseModel, ConfigDict, Field

from brain.config import config_from_dict, load_config
from brain.core.operator import PlanState
from brain.planner.engine import Engine, resolve_model
from brain.planner.plan import Planner, PlanResult, answer, carry_out, request_ok
from brain.planner.tools import Validator, parse_call

DESK = "operator-desk"


class AskBody(BaseModel):
    """POST /ask (module level: FastAPI resolves the annotations by name)."""

    model_config = ConfigDict(extra="forbid")
    request: str = Field(min_length=1, max_length=1000)
    execute: bool = False


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: str = Field(min_length=1, max_length=1000)
    calls: list[dict] = Field(min_length=1, max_length=8)
APP = "sitian"


class OperatorDesk:
    def __init__(self):
        self.state: dict | None = None
        self.state_wall: float = 0.0
        self.queue: list[tuple[int, str, dict]] = []
        self.results: dict[int, str | None] = {}
        self.seq = 0

    def put_state(self, state: dict) -> None:
        self.state, self.state_wall = state, time.time()

    def get_state(self) -> tuple[dict | None, float]:
        return self.state, (time.time() - self.state_wall) if self.state else float("inf")

    def submit(self, tool: str, args: dict) -> int:
        self.seq += 1
        self.queue.append((self.seq, tool, args))
        return self.seq

    def take(self) -> list[tuple[int, str, dict]]:
        out, self.queue = self.queue, []
        return out

    def done(self, action_id: int, refusal: str | None) -> None:
        self.results[action_id] = refusal

    def result(self, action_id: int):
        """(finished, refusal)."""
        if action_id in self.results:
            return True, self.results.pop(action_id)
        return False, None


def desk(create: bool = True):
    import ray  # lazy: heavy optional library

    if create:
        return ray.remote(OperatorDesk).options(
            name=DESK, get_if_exists=True, max_restarts=-1, num_cpus=0).remote()
    return ray.get_actor(DESK)


class PlannerService:
    """The planner with its engine (built once per replica)."""

    def __init__(self, config_dict: dict):
        self.config = config_from_dict(config_dict)
        p = self.config.planner
        self.engine = Engine(resolve_model(p.model, p.cache_dir), p.max_model_len)
        self.planner = Planner(self.config, self.engine)

    def plan(self, request: str, state: dict) -> dict:
        res = self.planner.plan(request, PlanState.from_dict(state))
        return res.to_json() | {"latency_s": round(res.latency_s, 3)}


STATE_MAX_AGE_S = 30.0  # an older state means the daemon is not answering: plan nothing


def app_builder(args: dict):
    """Serve's entry point (``import_path: brain.planner.api:app_builder``, e.g. a KubeRay
    RayService): ``args`` from the Serve config, ``config`` a site config path."""

    return build_app(load_config((args or {}).get("config")))


def build_app(config, planner_options: dict | None = None):
    """The Serve application: ``Api`` in front of a ``PlannerDeployment``. The planner
    asks for ``planner.num_gpus`` GPUs unless ``planner_options`` says otherwise."""
    from fastapi import FastAPI  # lazy: heavy optional library
    from fastapi.responses import JSONResponse  # lazy: heavy optional library
    from ray import serve  # lazy: heavy optional library

    api = FastAPI(title="SiTian Brain operators' API")

    planner_dep = serve.deployment(
        PlannerService, name="planner", num_replicas=1,
        ray_actor_options=planner_options or {"num_cpus": 1,
                                              "num_gpus": config.planner.num_gpus},
        health_check_period_s=10, health_check_timeout_s=120)

    @serve.deployment(name="api", num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Api:
        def __init__(self, planner, config_dict: dict):
            self.planner = planner
            self.config = config_from_dict(config_dict)
            self.validator = Validator(self.config)
            self.desk = desk(create=False)

        async def _state(self):
            state, age = await self.desk.get_state.remote()
            if state is None or age > STATE_MAX_AGE_S:
                return None
            return PlanState.from_dict(state)

        async def _carry_out(self, result: dict, state, execute: bool) -> dict:
            res = PlanResult(result["request"], result["calls"], result["valid"],
                             result["problems"])
            pending: list[int] = []

            def actuator(tool, args):
                pending.append(self.desk.submit.remote(tool, args))
                return None

            carry_out(res, state, self.validator, execute, actuator)
            if res.executed and pending:
                # The daemon applies actions on its loop; wait for its word on each.
                ids = [await ref for ref in pending]
                for aid in ids:
                    deadline = time.time() + 15.0
                    while True:
                        finished, refusal = await self.desk.result.remote(aid)
                        if finished or time.time() > deadline:
                            break
                        await asyncio.sleep(0.1)
                    if not finished or refusal:
                        res.executed = False
                        res.problems.append(refusal or "the daemon did not take the action "
                                            "within 15 s: not executed")
                        break
            return res.to_json()

        @api.post("/ask")
        async def ask(self, body: AskBody):
            if not request_ok(body.request):
                return JSONResponse({"error": "bad request text"}, status_code=400)
            state = await self._state()
            if state is None:
                return JSONResponse({"error": "no fresh state from the daemon"},
                                    status_code=503)
            result = await self.planner.plan.remote(body.request, state.to_dict())
            return await self._carry_out(result, state, body.execute)

        @api.post("/approve")
        async def approve(self, body: ApproveBody):
            state = await self._state()
            if state is None:
                return JSONResponse({"error": "no fresh state from the daemon"},
                                    status_code=503)
            problems, calls = [], []
            for c in body.calls:
                args, err = parse_call(str(c.get("tool")), c.get("args") or {})
                if err:
                    problems.append(err)
                    continue
                calls.append({"tool": c["tool"], "args": args.model_dump()})
                problems += self.validator.check(c["tool"], args, state, body.request)
            result = {"request": body.request, "calls": calls, "valid": not problems,
                      "problems": problems}
            return await self._carry_out(result, state, True)

        @api.get("/objects")
        async def objects(self, cls: str = "any", limit: int = 100):
            state = await self._state()
            if state is None:
                return JSONResponse({"error": "no fresh state from the daemon"},
                                    status_code=503)

            limit = max(1, min(int(limit), 1000))
            return answer("query_objects", {"cls": cls, "min_prob": 0.0, "limit": limit},
                          state, self.validator)

        @api.get("/status")
        async def status(self):
            state, age = await self.desk.get_state.remote()
            if state is None:
                return JSONResponse({"error": "no state from the daemon yet"},
                                    status_code=503)
            return {"t": state["t"], "state_age_s": round(age, 1), "sites": state["sites"],
                    "groups": state["groups"], "followups": state["followups"],
                    "summary": state["summary"]}

    cfg = config.model_dump(mode="json")
    return Api.bind(planner_dep.bind(cfg), cfg)


def start_api(config, port: int | None = None, host: str = "127.0.0.1",
              planner_options: dict | None = None):
    """Deploy the API (and the planner) on the connected Ray; returns once it is up."""
    from ray import serve  # lazy: heavy optional library

    desk(create=True)
    serve.start(http_options={"host": host, "port": port or config.planner.api_port},
                detached=False)
    serve.run(build_app(config, planner_options), name=APP, route_prefix="/",
              blocking=False)


def ask_daemon(api: str, request: str, execute: bool, timeout_s: float = 120.0) -> dict:
    """``brain ask`` against the running daemon's API."""
    body = json.dumps({"request": request, "execute": execute}).encode()
    req = urllib.request.Request(api.rstrip("/") + "/ask", body,
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise OSError(f"HTTP {exc.code}: {detail}") from None
