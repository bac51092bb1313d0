"""CURVE key pairs for SBP1 (``brain keys DIR``).

Layout of DIR:

* ``brain.key`` / ``brain.key_secret`` — the brain's pair (the secret stays on the brain's
  host; devices get ``brain.key``);
* ``NAME.key`` / ``NAME.key_secret`` — a device pair (default NAME ``devices``), whose
  public half is copied into ``authorized/``: the brain's authenticator accepts exactly
  the public keys found there, so an unknown key never completes the handshake.

Rotation: create a new pair with ``--name``, deploy it to the drivers, then delete the old
public key from ``authorized/`` (the brain reads the directory at start).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import zmq.auth


def device_keys(directory: str | os.PathLike, name: str = "devices"
                ) -> tuple[bytes, bytes, bytes]:
    """(brain public, device public, device secret) for a driver's CURVE client; a missing
    or unreadable file is a ValueError naming the directory."""
    d = Path(directory)
    try:
        server_pub, _ = zmq.auth.load_certificate(d / "brain.key")
        pub, sec = zmq.auth.load_certificate(d / f"{name}.key_secret")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read CURVE keys in {directory}: {exc}") from None
    if sec is None:
        raise ValueError(f"{d / name}.key_secret holds no secret key")
    return server_pub, pub, sec


def create_keys(directory: str | os.PathLike, name: str = "devices") -> list[Path]:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) or name == "brain":
        raise ValueError(f"key name {name!r} must be 1-64 letters, digits, '_' or '-' "
                         "(and not 'brain')")
    d = Path(directory)
    (d / "authorized").mkdir(parents=True, exist_ok=True)
    made = []
    if not (d / "brain.key_secret").is_file():
        pub, sec = zmq.auth.create_certificates(d, "brain")
        made += [Path(pub), Path(sec)]
    if (d / f"{name}.key_secret").is_file():
        raise ValueError(f"{d / name}.key_secret exists; choose another --name")
    pub, sec = zmq.auth.create_certificates(d, name)
    shutil.copy(pub, d / "authorized" / Path(pub).name)
    os.chmod(sec, 0o600)
    if (d / "brain.key_secret").is_file():
        os.chmod(d / "brain.key_secret", 0o600)
    return [*made, Path(pub), Path(sec), d / "authorized" / Path(pub).name]
