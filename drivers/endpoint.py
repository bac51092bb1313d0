"""ZeroMQ endpoints: which ones stay on this machine (the security default: no
encryption on loopback, CURVE elsewhere; docs/protocol.md, "Security")."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse


def is_loopback(endpoint: str) -> bool:
    """True for tcp://127.x, tcp://[::1], tcp://localhost, ipc:// and inproc://."""
    u = urlparse(endpoint)
    if u.scheme in ("ipc", "inproc"):
        return True
    host = (u.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
