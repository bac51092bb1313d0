"""A bridge command as a plan of INDI requests (:class:`Step`), each finished when its
property says so (docs/indi.md, "Command mapping")."""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.device import CommandError
from drivers.indi.client import ALERT, IDLE, OK, IndiClient, IndiError, Vector


class Step:
    """One INDI request and how to tell that it finished.

    Finished: the property was ``Busy`` after the request and is not any more, or (for a
    driver that answers at once) it is ``Ok`` with the requested values after ``GRACE_S``.
    ``Alert`` after ``GRACE_S`` (an update already on its way when the request left may
    still carry the previous state) fails the command."""

    GRACE_S = 0.5

    def __init__(self, client: IndiClient, device: str, prop: str, what: str,
                 timeout_s: float, send: Callable[[], int], matches: Callable[[Vector], bool],
                 need_busy: bool = False, skip_if_done: bool = True):
        self.client, self.device, self.prop, self.what = client, device, prop, what
        self.timeout_s, self._send, self.matches = timeout_s, send, matches
        self.need_busy, self.skip_if_done = need_busy, skip_if_done
        self.seq0 = -1
        self.t0 = 0.0
        self.t_busy: float | None = None  # monotonic time Busy was first seen

    def start(self) -> bool:
        """Send the request; True if nothing had to be done."""
        vec = self.client.get(self.device, self.prop)
        if vec is None:
            raise CommandError("device_fault", f"{self.device} has no property {self.prop} "
                               "(not connected?)")
        if self.skip_if_done and vec.state in (OK, IDLE) and self.matches(vec):
            return True
        self.t0 = time.monotonic()
        try:
            self.seq0 = self._send()
        except IndiError as exc:
            raise CommandError("device_fault", str(exc)) from None
        return False

    def done(self) -> bool:
        vec = self.client.get(self.device, self.prop)
        now = time.monotonic()
        if vec is None:
            raise CommandError("device_fault", f"{self.device}.{self.prop} vanished during "
                               f"{self.what} (INDI server or driver gone)")
        fresh = vec.seq > self.seq0
        saw_busy = vec.busy_seq > self.seq0
        if saw_busy and self.t_busy is None:
            self.t_busy = now
        settled = now - self.t0 > self.GRACE_S
        if fresh and vec.state == ALERT and (settled or saw_busy):
            why = (self.client.last_message(self.device, self.t0)
                   or f"{self.prop} went to Alert")
            raise CommandError("device_fault", f"{self.what}: {self.device}: {why}")
        if vec.state in (OK, IDLE) and fresh:
            if saw_busy and vec.busy_seq < vec.seq:
                return True
            if not self.need_busy and settled and self.matches(vec):
                return True
        if now - self.t0 > self.timeout_s:
            raise CommandError("timeout", f"{self.what}: {self.device}.{self.prop} still "
                               f"{vec.state} after {self.timeout_s:.0f} s")
        return False
