"""A bridge command as a plan of Alpaca requests (:class:`Step`), each finished when the
polled state says so (docs/alpaca.md, "Command mapping")."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from drivers.alpaca.client import AlpacaClient, describe
from drivers.device import CommandError


class Step:
    """One Alpaca request (``send``, run on the client's worker) and how to tell that it
    finished: ``done()`` true on a snapshot polled after the request was answered.

    ``skip()`` true before sending: nothing to do (the idempotent commands). ``fail()``
    returning a message on such a snapshot fails the command (``device_fault``), as does
    the request's own error; a step that outlasts ``timeout_s`` fails with ``timeout``.
    ``result`` is what the request returned."""

    def __init__(self, client: AlpacaClient, what: str, timeout_s: float,
                 send: Callable[[], Any], done: Callable[[], bool],
                 skip: Callable[[], bool] | None = None,
                 fail: Callable[[], str | None] | None = None):
        self.client, self.what, self.timeout_s = client, what, float(timeout_s)
        self._send, self._done, self._skip, self._fail = send, done, skip, fail
        self.t0 = 0.0  # monotonic time the request was queued
        self.t_answered: float | None = None  # ... and answered
        self.future: Future | None = None
        self.result: Any = None

    def start(self) -> bool:
        """Queue the request; True if nothing had to be done."""
        if self._skip is not None and self._skip():
            return True
        self.t0 = time.monotonic()
        self.future = self.client.call(self.what, self._send)
        return False

    def done(self) -> bool:
        fut = self.future
        now = time.monotonic()
        if fut is None or not fut.done():
            if now - self.t0 > self.timeout_s:
                raise CommandError("timeout", f"{self.what}: no answer from the Alpaca "
                                   f"server {self.client.address} in {self.timeout_s:.0f} s")
            return False
        exc = fut.exception()
        if exc is not None:
            raise CommandError("device_fault", f"{self.what}: {describe(exc)}")
        if self.t_answered is None:
            self.t_answered, self.result = now, fut.result()
        if self.client.gen <= fut.gen:  # no snapshot since the answer yet
            return False
        if self._fail is not None:
            why = self._fail()
            if why:
                raise CommandError("device_fault", f"{self.what}: {why}")
        if self._done():
            return True
        if now - self.t0 > self.timeout_s:
            raise CommandError("timeout", f"{self.what}: not finished after "
                               f"{self.timeout_s:.0f} s")
        return False
