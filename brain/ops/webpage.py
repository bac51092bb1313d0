"""The operator web page (issue 21): one self-contained HTML page and its JSON, served by
the daemon itself with either hosting (docs/operator-page.md).

A stdlib :class:`~http.server.HTTPServer` on a thread of the daemon's process (asleep in
``accept``: no polling), a thread per open connection (at most ``CONNECTIONS``).
The daemon's loop never waits for it: the loop publishes a snapshot (JSON bytes, built
by :class:`brain.ops.webstate.WebState`) about once a second, which the server swaps in
under a lock and serves as it is; an approved action goes into a queue the loop drains
on its next turn (validated, journalled and sent as the Ray desk's actions are), and the
HTTP thread waits, bounded, for the loop's verdict. An action still queued when the wait
ends is withdrawn, so it is never carried out after its requester was told it was not.

* ``GET /``: the page (``webpage.html``, package data: inline CSS and script, no
  external resource of any kind; the Content-Security-Policy forbids them too).
* ``GET /api/state``: ``{"age_s", "planner_url", "plans", "state"}``; ``age_s`` is the
  snapshot's age when served.
* ``POST /api/action`` ``{"tool", "args"}``: one action of ``brain.planner.tools.TOOLS``
  that moves hardware (pause or resume a group, close or open a site, request or cancel
  a spectrum, set the survey region).
* ``POST /api/ask`` ``{"request"}``: with Ray hosting, asks the planner through the
  operators' API (``POST /ask`` with ``execute: false``) and keeps the plan;
  ``POST /api/plans/approve`` or ``/api/plans/reject`` ``{"id"}`` decides it (an approved
  plan's actions go to the loop with the request's words, against which they are
  validated again).

**Login.** Every POST needs the operators' token (``Authorization: Bearer <token>``),
compared with :func:`hmac.compare_digest`; the token is a file's contents (``brain keys
DIR --web-token`` writes one; ``brain run --web-token FILE`` or ``ops.web_token_file``
points to it), read again when the file changes. Without a valid token: HTTP 401 with a
one-line ``error``, nothing queued, ``sitian_web_actions_total{result="unauthorized"}``
counted. Reads need no login on loopback (whoever can reach the loopback already runs
on the brain host), and there the Host header must name the loopback (a page elsewhere
cannot read the state through DNS rebinding); bound to another address, reads need the
token as well. No token configured: every action is refused.

Bad input (not JSON, unknown tool, bad arguments, too large) is answered 400 or 413 with
one line; nothing changes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily

from brain.planner.tools import TOOLS, parse_call

log = logging.getLogger("brain.ops.webpage")

ACTION_WAIT_S = 10.0  # an HTTP request waits this long for the loop's verdict
ASK_TIMEOUT_S = 120.0
MAX_BODY = 64 * 1024
TOKEN_MIN_CHARS = 16
PLANS_KEPT = 20
CONNECTIONS = 16  # open at once (a browser keeps up to 6 to one server)
RESULTS = ("done", "refused", "unauthorized", "bad_request", "timeout")
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def page() -> bytes:
    return resources.files("brain.ops").joinpath("webpage.html").read_bytes()


class TokenError(ValueError):
    """A token file that cannot serve (one line, for the operator)."""


def read_token(path: str | Path) -> str:
    """The token in ``path`` (one line, at least ``TOKEN_MIN_CHARS`` characters)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenError(f"token file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read token file {str(path)!r}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    token = text.strip()
    if "\n" in token or any(c.isspace() for c in token):
        raise TokenError(f"token file {str(path)!r} must hold one token, without spaces")
    if len(token) < TOKEN_MIN_CHARS:
        raise TokenError(f"token in {str(path)!r} is shorter than {TOKEN_MIN_CHARS} "
                         "characters")
    return token


def write_token(path: str | Path) -> Path:
    """A new random token in ``path`` (mode 0600); refuses to overwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TokenError(f"{path} exists: remove it first to make a new token") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return path


class _Token:
    """The configured token, read again whenever its file changes."""

    def __init__(self, path: str | None):
        self.path = path
        self._key: tuple | None = None
        self._token: str | None = None
        self._problem = "actions need a token and none is set on the daemon (brain run " \
                        "--web-token FILE, or ops.web_token_file)"
        self._lock = threading.Lock()

    def check(self, header: str | None) -> str | None:
        """None when ``header`` carries the token, else why not (one line)."""
        with self._lock:
            if self.path is not None:
                try:
                    st = os.stat(self.path)
                    key = (st.st_mtime_ns, st.st_size, st.st_ino)
                    if key != self._key:
                        self._token, self._key = read_token(self.path), key
                except (OSError, TokenError) as exc:
                    self._token, self._key = None, None
                    self._problem = f"actions are off: {exc}"
            token = self._token
        if token is None:
            return self._problem
        if not header:
            return "log in: this needs the operators' token"
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return "log in: send the token as 'Authorization: Bearer <token>'"
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return "wrong token"
        return None


@dataclass
class Action:
    """One action from the page, waiting for the loop."""

    tool: str
    args: dict
    request: str | None = None  # a plan's words; None for a direct action
    state: str = "queued"  # queued, taken (by the loop), withdrawn (the wait ended)
    problems: list[str] | None = None
    done: threading.Event = field(default_factory=threading.Event)


class _Counters:
    """``sitian_web_actions_total{result}``: the page's actions by outcome."""

    def __init__(self):
        self.values = dict.fromkeys(RESULTS, 0)
        self._lock = threading.Lock()

    def inc(self, result: str) -> None:
        with self._lock:
            self.values[result] += 1

    def collect(self):
        c = CounterMetricFamily("sitian_web_actions", "Actions asked of the operator web "
                                "page, by result (done, refused by the daemon, "
                                "unauthorized, bad_request, timeout)", labels=["result"])
        for k, v in list(self.values.items()):
            c.add_metric([k], float(v))
        yield c


class WebServer:
    """The page's HTTP server, on a thread of its own (daemon threads per request)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9181,
                 token_file: str | None = None, planner_url: str | None = None,
                 registry=None):
        self.host = host
        self.loopback = ipaddress.ip_address(host).is_loopback
        self.token = _Token(token_file)
        self.planner_url = planner_url
        self.counters = _Counters()
        self._page = page()
        self._lock = threading.Lock()
        self._blob: bytes | None = None
        self._built = 0.0  # monotonic time of the blob
        self._actions: deque[Action] = deque()
        self.plans: OrderedDict[int, dict] = OrderedDict()
        self._plan_seq = 0
        self.httpd = HTTPServer((host, port), _Handler)
        self.httpd.timeout = None  # get_request sleeps until a connection: no polling
        self.httpd.web = self
        self.port = self.httpd.server_address[1]
        if registry is not None:  # once the port is bound
            registry.register(self.counters)
        self._stop = threading.Event()
        self._slots = threading.Semaphore(CONNECTIONS)
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        """Accept (asleep until a connection comes) and hand each connection to a thread
        of its own; past ``CONNECTIONS`` open at once, a new one is closed at once."""
        while not self._stop.is_set():
            try:
                request, client = self.httpd.get_request()
            except OSError:
                continue
            if self._stop.is_set() or not self._slots.acquire(blocking=False):
                self.httpd.shutdown_request(request)
                continue
            threading.Thread(target=self._connection, args=(request, client),
                             name="web-http", daemon=True).start()

    def _connection(self, request, client) -> None:
        try:
            self.httpd.finish_request(request, client)
        except OSError:  # stalled past its timeout, or gone: cut off, quietly
            pass
        except Exception as exc:  # a bug must not take the page down
            log.error("web request failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.httpd.shutdown_request(request)
            self._slots.release()

    # The loop's side --------------------------------------------------------------
    def publish(self, blob: bytes) -> None:
        with self._lock:
            self._blob, self._built = blob, time.monotonic()

    def take_actions(self) -> list[Action]:
        """The queued actions (now ``taken``: they will be carried out or refused)."""
        out = []
        with self._lock:
            while self._actions:
                a = self._actions.popleft()
                if a.state == "queued":
                    a.state = "taken"
                    out.append(a)
        return out

    def finish(self, action: Action, problems: list[str]) -> None:
        action.problems = list(problems)
        action.done.set()

    def close(self) -> None:
        with self._lock:
            pending, self._actions = list(self._actions), deque()
        for a in pending:
            a.state = "withdrawn"
            self.finish(a, ["the daemon is stopping: not executed"])
        self._stop.set()
        if self._thread.is_alive():
            try:  # wake the accept
                socket.create_connection(self.httpd.server_address[:2], timeout=1).close()
            except OSError:
                pass
            self._thread.join(5)
        self.httpd.server_close()

    # The HTTP threads' side ---------------------------------------------------------
    def state_body(self) -> bytes | None:
        with self._lock:
            blob, built = self._blob, self._built
            plans = list(self.plans.values())
        if blob is None:
            return None
        head = json.dumps({"age_s": round(time.monotonic() - built, 3),
                           "planner_url": self.planner_url, "plans": plans[::-1]})
        return head[:-1].encode() + b', "state": ' + blob + b"}"

    def act(self, tool: str, args: dict, request: str | None = None) -> list[str] | None:
        """Queue an action and wait for the loop's verdict: its problems ([] when done),
        or None when the loop did not take it in time (withdrawn: never carried out)."""
        a = Action(tool, args, request)
        with self._lock:
            self._actions.append(a)
        if not a.done.wait(ACTION_WAIT_S):
            with self._lock:
                if a.state == "queued":
                    a.state = "withdrawn"
                    return None
            a.done.wait()  # taken meanwhile: the loop is carrying it out now
        return a.problems

    def ask(self, request: str) -> tuple[int, dict]:
        """Plan ``request`` with the planner behind the operators' API; keep the plan."""
        if self.planner_url is None:
            return 503, {"error": "planner not hosted: brain run --hosting local has no "
                                  "planner (use --hosting ray)"}
        body = json.dumps({"request": request, "execute": False}).encode()
        req = urllib.request.Request(self.planner_url.rstrip("/") + "/ask", body,
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=ASK_TIMEOUT_S) as r:
                plan = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read()).get("error")
            except (ValueError, AttributeError):
                err = None
            return (exc.code if exc.code >= 400 else 502), {
                "error": err or f"the operators' API answered HTTP {exc.code}"}
        except (OSError, ValueError) as exc:
            return 503, {"error": f"the operators' API is not answering: "
                                  f"{getattr(exc, 'reason', None) or exc}"}
        if not isinstance(plan, dict) or not isinstance(plan.get("calls"), list):
            return 502, {"error": "the operators' API answered something else than a plan"}
        valid = bool(plan.get("valid"))
        acts = any(isinstance(c, dict) and c.get("tool") in TOOLS
                   and TOOLS[c["tool"]].moves_hardware for c in plan["calls"])
        # only a valid plan with an action waits for a decision
        status = "pending" if valid and acts else "answered" if valid else "not valid"
        with self._lock:
            self._plan_seq += 1
            kept = {"id": self._plan_seq, "request": request, "calls": plan["calls"],
                    "valid": valid, "problems": plan.get("problems", []),
                    "results": plan.get("results", []), "status": status,
                    "t_wall": time.time()}
            self.plans[kept["id"]] = kept
            while len(self.plans) > PLANS_KEPT:
                self.plans.popitem(last=False)
        return 200, kept

    def decide(self, plan_id, approve: bool) -> tuple[int, dict]:
        with self._lock:
            plan = self.plans.get(plan_id) if isinstance(plan_id, int) else None
            if plan is None:
                return 404, {"error": f"no plan {plan_id!r}"}
            if plan["status"] != "pending":
                return 409, {"error": f"plan {plan_id} is {plan['status']}: nothing to "
                                      "decide"}
            plan["status"] = "approving" if approve else "rejected"
        if not approve:
            return 200, plan
        done = []
        for c in plan["calls"]:
            tool = c.get("tool") if isinstance(c, dict) else None
            if tool not in TOOLS or not TOOLS[tool].moves_hardware:
                continue  # read-only calls were answered when the plan was made
            problems = self.act(tool, c.get("args") or {}, plan["request"])
            if problems is None or problems:
                why = "; ".join(problems) if problems else \
                    f"the daemon did not take {tool} within {ACTION_WAIT_S:g} s"
                plan["status"] = "refused: " + why + (
                    f" (done before it: {', '.join(done)})" if done else "")
                self.counters.inc("timeout" if problems is None else "refused")
                return 409 if problems else 504, {"error": plan["status"], "plan": plan}
            done.append(tool)
            self.counters.inc("done")
        plan["status"] = "approved"
        return 200, plan


def _host_ok(header: str | None) -> bool:
    """The Host header names the loopback (reads without login; DNS rebinding)."""
    if not header:
        return False
    name = urlsplit("//" + header).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server_version = "sitian-web"
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # a client that stalls mid-request loses its connection

    @property
    def web(self) -> WebServer:
        return self.server.web

    def log_message(self, fmt, *args) -> None:  # requests: debug only
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: dict) -> None:
        self._send(code, json.dumps(obj).encode())

    def _read_ok(self) -> bool:
        if self.web.loopback:
            if _host_ok(self.headers.get("Host")):
                return True
            self._json(403, {"error": "unexpected Host header: open the page at "
                                      "http://127.0.0.1:<port>/"})
            return False
        why = self.web.token.check(self.headers.get("Authorization"))
        if why is not None:
            self._json(401, {"error": why})
        return why is None

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            if self.web.loopback and not _host_ok(self.headers.get("Host")):
                self._json(403, {"error": "unexpected Host header"})
                return
            self._send(200, self.web._page, "text/html; charset=utf-8")
        elif path == "/api/state":
            if not self._read_ok():
                return
            body = self.web.state_body()
            if body is None:
                self._json(503, {"error": "no state from the daemon yet"})
            else:
                self._send(200, body)
        else:
            self._json(404, {"error": f"no such page {path!r}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        routes = {"/api/action": self._action, "/api/ask": self._ask,
                  "/api/plans/approve": self._approve, "/api/plans/reject": self._reject}
        route = routes.get(path)
        if route is None:
            self._json(404, {"error": f"no such endpoint {path!r}"})
            return
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            if MAX_BODY < n <= 16 * MAX_BODY:  # read it, so the client hears the answer
                self.rfile.read(n)
            self.web.counters.inc("bad_request")
            self._json(413 if n > MAX_BODY else 400,
                       {"error": f"the body must be JSON of at most {MAX_BODY} bytes"})
            return
        raw = self.rfile.read(n)
        why = self.web.token.check(self.headers.get("Authorization"))
        if why is not None:
            self.web.counters.inc("unauthorized")
            log.warning("web: %s refused (401): %s", path, why)
            self._json(401, {"error": why})
            return
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.web.counters.inc("bad_request")
            self._json(400, {"error": "the body is not JSON"})
            return
        if not isinstance(body, dict):
            self.web.counters.inc("bad_request")
            self._json(400, {"error": "the body must be a JSON object"})
            return
        route(body)

    def _bad(self, why: str) -> None:
        self.web.counters.inc("bad_request")
        self._json(400, {"error": why})

    def _action(self, body: dict) -> None:
        tool, args = body.get("tool"), body.get("args", {})
        if set(body) - {"tool", "args"}:
            return self._bad(f"unknown key {sorted(set(body) - {'tool', 'args'})[0]!r}")
        if not isinstance(tool, str) or tool not in TOOLS:
            return self._bad(f"unknown action {tool!r}")
        if not TOOLS[tool].moves_hardware:
            return self._bad(f"{tool} is not an action (it moves nothing)")
        if not isinstance(args, dict):
            return self._bad("args must be a JSON object")
        _parsed, err = parse_call(tool, args)
        if err:
            return self._bad(err)
        problems = self.web.act(tool, args)
        if problems is None:
            self.web.counters.inc("timeout")
            return self._json(504, {"error": f"the daemon did not take {tool} within "
                                             f"{ACTION_WAIT_S:g} s: not executed"})
        if problems:
            self.web.counters.inc("refused")
            return self._json(409, {"error": "; ".join(problems)})
        self.web.counters.inc("done")
        log.info("web: %s %s done", tool, args)
        self._json(200, {"ok": True, "tool": tool, "args": args})

    def _ask(self, body: dict) -> None:
        req = body.get("request")
        if not isinstance(req, str) or not req.strip() or len(req) > 1000:
            return self._bad("request must be text of 1 to 1000 characters")
        code, out = self.web.ask(req.strip())
        self._json(code, out)

    def _approve(self, body: dict) -> None:
        code, out = self.web.decide(body.get("id"), True)
        self._json(code, out)

    def _reject(self, body: dict) -> None:
        code, out = self.web.decide(body.get("id"), False)
        self._json(code, out)

