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

The daemon (``start_api`` then ``start_planner``) deploys the planner as a Serve
application of its own (``PLANNER_APP``), after the API: the engine takes about a minute
to start, and meanwhile the API answers. The daemon tells the desk the planner's status
with each state it pushes (``loading``, ``ready``, ``failed: <reason>``); ``GET /status``
shows it as ``"planner"``, and ``POST /ask`` answers 503 with a one-line ``error`` and
``"planner": "loading"`` until it is ready. ``/approve``, ``/objects`` and ``/status``
need no planner. ``app_builder`` (a RayService) binds the planner into the one application.

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
PLANNER_APP = "sitian-planner"


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
        self.planner = "unknown"  # no word yet from whoever deploys the planner

    def put_state(self, state: dict, planner: str | None = None) -> None:
        self.state, self.state_wall = state, time.time()
        if planner is not None:  # the daemon says it with each state: a restarted desk
            self.planner = planner  # learns it again within seconds

    def set_planner(self, status: str) -> None:
        self.planner = status

    def planner_status(self) -> str:
        return self.planner

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


def planner_unavailable(status: str) -> str:
    """/ask's one line while the planner cannot plan."""
    if status == "loading":
        return ("the planner is loading: its model starts after the daemon (about a "
                "minute); GET /status says \"planner\": \"ready\" when it can plan")
    if status.startswith("failed"):
        return f"the planner did not start ({status}); see the daemon's log"
    return f"the planner is not ready ({status})"


def app_builder(args: dict):
    """Serve's entry point (``import_path: brain.planner.api:app_builder``, e.g. a KubeRay
    RayService): ``args`` from the Serve config, ``config`` a site config path."""

    return build_app(load_config((args or {}).get("config")))


def planner_app(config, planner_options: dict | None = None, service=PlannerService):
    """The ``planner`` deployment, bound: it asks for ``planner.num_gpus`` GPUs unless
    ``planner_options`` says otherwise. ``service``: the class it serves (tests: a
    planner that loads slowly)."""
    from ray import serve  # lazy: heavy optional library

    dep = serve.deployment(
        service, name="planner", num_replicas=1,
        ray_actor_options=planner_options or {"num_cpus": 1,
                                              "num_gpus": config.planner.num_gpus},
        health_check_period_s=10, health_check_timeout_s=120)
    return dep.bind(config.model_dump(mode="json"))


def build_app(config, planner_options: dict | None = None, separate_planner: bool = False):
    """The Serve application: ``Api`` in front of a ``PlannerDeployment`` (bound into
    this application), or with ``separate_planner`` in front of the ``PLANNER_APP``
    application, found by name once the desk says it is ready."""
    from fastapi import FastAPI  # lazy: heavy optional library
    from fastapi.responses import JSONResponse  # lazy: heavy optional library
    from ray import serve  # lazy: heavy optional library

    api = FastAPI(title="SiTian Brain operators' API")

    @serve.deployment(name="api", num_replicas=1, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Api:
        def __init__(self, planner, config_dict: dict):
            self.planner = planner  # None: the PLANNER_APP, once ready
            self.config = config_from_dict(config_dict)
            self.validator = Validator(self.config)
            self.desk = desk(create=False)

        async def _planner(self):
            """(the planner's handle, "ready"), or (None, its status) while it is not."""
            if self.planner is not None:
                return self.planner, "ready"
            status = await self.desk.planner_status.remote()
            if status != "ready":
                return None, status
            self.planner = serve.get_deployment_handle("planner", app_name=PLANNER_APP)
            return self.planner, status

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
            planner, status = await self._planner()
            if planner is None:
                return JSONResponse({"error": planner_unavailable(status),
                                     "planner": status}, status_code=503)
            state = await self._state()
            if state is None:
                return JSONResponse({"error": "no fresh state from the daemon"},
                                    status_code=503)
            result = await planner.plan.remote(body.request, state.to_dict())
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
            _, planner = await self._planner()
            if state is None:
                return JSONResponse({"error": "no state from the daemon yet",
                                     "planner": planner}, status_code=503)
            return {"t": state["t"], "state_age_s": round(age, 1), "planner": planner,
                    "sites": state["sites"],
                    "groups": state["groups"], "followups": state["followups"],
                    "summary": state["summary"]}

    cfg = config.model_dump(mode="json")
    if separate_planner:
        return Api.bind(None, cfg)
    return Api.bind(planner_app(config, planner_options), cfg)


def start_api(config, port: int | None = None, host: str = "127.0.0.1",
              planner_options: dict | None = None, planner: bool = True):
    """Deploy the API on the connected Ray, in front of the ``PLANNER_APP``; returns once
    it answers. With ``planner``, :func:`start_planner` as well (returns once both are
    up); the daemon starts the planner itself, later, and says how it goes."""
    from ray import serve  # lazy: heavy optional library

    d = desk(create=True)
    serve.start(http_options={"host": host, "port": port or config.planner.api_port},
                detached=False)
    serve.run(build_app(config, separate_planner=True), name=APP, route_prefix="/",
              blocking=False)
    if planner:
        start_planner(config, planner_options)
        d.set_planner.remote("ready")


def start_planner(config, planner_options: dict | None = None, service=PlannerService):
    """Deploy the planner (``PLANNER_APP``, no HTTP route of its own); returns once its
    engine is up (about a minute on 2 cores), raises if it cannot start."""
    from ray import serve  # lazy: heavy optional library

    serve.run(planner_app(config, planner_options, service), name=PLANNER_APP,
              route_prefix=None, blocking=False)


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
