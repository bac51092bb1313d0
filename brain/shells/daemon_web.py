"""The operator web page as a part of the daemon (docs/operator-page.md).

:class:`WebPart` sits in the daemon's list of background parts (``Daemon.background``),
beside the models and the night jobs, so the daemon drives it as it drives them: it is
started with them (the server binds its port then; a busy port is one line in the log
and the daemon goes on without the page, as without the operators' API), its
:meth:`~WebPart.apply` runs on the loop each turn and it is closed with the daemon. Its
state is on ``/metrics`` as ``sitian_startup_ready{part="web"}``.

On the loop, :meth:`~WebPart.apply` carries out the actions the page approved
(:meth:`brain.shells.daemon.Daemon.operator_action`, exactly as the Ray desk's: validated
against the state now, journalled, sent; a refusal journalled) and publishes a snapshot
(:class:`brain.ops.webstate.WebState`) every ``PUBLISH_S`` of wall time (less often if a
snapshot costs the loop more than ``LOOP_SHARE`` of its time, but at least every
``MAX_PUBLISH_S``), and at once after an action. The HTTP threads only read the published
bytes and queue actions.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque

from brain.ops.webpage import WebServer
from brain.ops.webstate import WebState
from brain.shells.daemon import device_specs

log = logging.getLogger("brain.shells.daemon")

PUBLISH_S = 1.0  # a snapshot each second, or less often when one costs the loop more
LOOP_SHARE = 0.03  # than this share of its time (a big catalogue of candidates),
MAX_PUBLISH_S = 3.5  # but at least this often: the page shows data at most 5 s old


def web_parts(d, web_port: int | None, web_token: str | None, hosting: str,
              api_url: str | None) -> list:
    """``[WebPart]``, or ``[]`` when the page is off (port 0). ``web_port``/``web_token``
    override the config's ``ops.web_port``/``ops.web_token_file``; ``api_url``: the
    operators' API that plans (None: no planner hosted)."""
    ops = d.config.ops
    port = ops.web_port if web_port is None else web_port
    if not port:
        return []
    return [WebPart(d, ops.web_host, port, web_token or ops.web_token_file, hosting,
                    api_url)]


class WebPart:
    def __init__(self, d, host: str, port: int, token_file: str | None, hosting: str,
                 api_url: str | None):
        self.d = d
        self.host, self.port, self.token_file = host, port, token_file
        self.api_url = api_url
        self.status = {"web": "loading"}
        self.server: WebServer | None = None
        self.web_state = WebState(d.config, hosting)
        self._specs = device_specs(d.config)
        self._next = 0.0
        # what each snapshot cost the loop: (wall s, CPU s), the latest 100 (the log, the bench)
        self.publish_s: deque[tuple[float, float]] = deque(maxlen=100)

    def start(self) -> None:
        try:
            self.server = WebServer(self.host, self.port, self.token_file, self.api_url,
                                    self.d.registry)
        except OSError as exc:
            self.status["web"] = f"failed: web port {self.port}: {exc.strerror or exc}"
            log.error("operator page did not start (%s); the daemon goes on without it",
                      self.status["web"][len("failed: "):])
            return
        self.server.publish(self.snapshot())  # on the loop's thread, before it turns
        self.server.start()
        self.status["web"] = "ready"
        log.info("operator page on http://%s:%d/ (actions %s)", self.host,
                 self.server.port, "need the token" if self.token_file else
                 "off: no token file")

    def apply(self) -> bool:
        """On the loop: the page's actions, then a fresh snapshot when one is due."""
        if self.server is None:
            return False
        d = self.d
        worked = False
        actions = self.server.take_actions()
        if actions:
            state = d.core.plan_state(d.clock.now())
            for a in actions:
                problems = d.operator_action(a.tool, a.args, state, a.request)
                self.server.finish(a, problems)
                if not problems:  # the next action is checked against this one's effect
                    state = d.core.plan_state(d.clock.now())
            self._next = 0.0  # the page shows the outcome at its next poll
            worked = True
        wall = time.monotonic()
        if wall >= self._next:
            t0, cpu0 = time.perf_counter(), time.thread_time()
            self.server.publish(self.snapshot())
            took = time.perf_counter() - t0
            self.publish_s.append((took, time.thread_time() - cpu0))
            # at most LOOP_SHARE of the loop's time, and never older than MAX_PUBLISH_S
            self._next = wall + min(max(PUBLISH_S, took / LOOP_SHARE), MAX_PUBLISH_S)
            worked = True
        return worked

    def snapshot(self) -> bytes:
        d = self.d
        peers = d.link.peers
        devices = {}
        for dev, spec in self._specs.items():
            peer = peers.get(dev)
            devices[dev] = {"kind": spec.kind, "site": spec.site,
                            "up": bool(peer is not None and peer.welcomed),
                            "state": str((peer.state or {}).get("state", "")) if peer else ""}
        planner = d.planner_status() if d.planner_status is not None else "not hosted"
        snap = self.web_state.build(d.core, d.clock.now(), devices, planner,
                                    d.link.session)
        return json.dumps(snap, separators=(",", ":"), allow_nan=False).encode()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            if self.publish_s:
                wall = sorted(w * 1e3 for w, _ in self.publish_s)
                cpu = sorted(c * 1e3 for _, c in self.publish_s)
                log.info("operator page: a snapshot took %.2f ms of the loop, %.2f ms CPU "
                         "(medians of the last %d; max %.2f ms, %.2f ms CPU)",
                         wall[len(wall) // 2], cpu[len(cpu) // 2], len(wall), wall[-1],
                         cpu[-1])
