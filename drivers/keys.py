"""CURVE key pairs for SBP1 (``brain keys DIR``).

Layout of DIR:

* ``brain.key`` / ``brain.key_secret`` — the brain's pair (the secret stays on the brain's
  host; devices get ``brain.key``);
* ``NAME.key`` / ``NAME.key_secret`` — a device pair (default NAME ``devices``), whose
  public half is copied into ``authorized/``: the brain's authenticator accepts exactly
  the public keys found there, so an unknown key never completes the handshake.

Rotation: create a new pair with ``--name``, deploy it to the drivers, then delete the old
public key from ``authorized/`` (the brain reads the directory at start).

A pair may be bound to devices (``--devices "xl.*,xl.wx"``: device-id globs, kept in the
public certificate's ``metadata`` section). A key so bound that says HELLO, or speaks, as
any other device gets ``ERROR unauthorised``; a key without the line may be any device.
"""

from __future__ import annotations

import fnmatch
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


def authorised_devices(authorised: str | os.PathLike) -> dict[bytes, tuple[str, ...] | None]:
    """For each public key (Z85) in ``authorized/``: the device-id globs it is bound to,
    or None where it is not bound."""
    out: dict[bytes, tuple[str, ...] | None] = {}
    for path in sorted(Path(authorised).glob("*.key")):
        text = path.read_text(errors="replace")
        key = re.search(r'public-key\s*=\s*"([^"]{40})"', text)
        if key is None:
            continue
        bound = re.search(r'^\s*devices\s*=\s*"?([^"\n]*)"?\s*$', text, re.MULTILINE)
        out[key.group(1).encode()] = (None if bound is None else tuple(
            g.strip() for g in bound.group(1).split(",") if g.strip()))
    return out


def may_be(globs: tuple[str, ...] | None, device: str) -> bool:
    """Whether a key bound to ``globs`` (None: unbound) may speak as ``device``."""
    return globs is None or any(fnmatch.fnmatchcase(device, g) for g in globs)


def create_keys(directory: str | os.PathLike, name: str = "devices",
                devices: str | None = None) -> list[Path]:
    """The brain's pair (once) and a device pair ``name``, authorised at once; bound to
    the device-id globs in ``devices`` (comma-separated) when given."""
    if devices is not None and not re.fullmatch(r"[a-z0-9._*?\[\]-]+(,[a-z0-9._*?\[\]-]+)*",
                                                 devices):
        raise ValueError(f"--devices {devices!r} must be comma-separated device-id globs "
                         "(e.g. 'xl.*,mz.wx')")
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
    if devices is not None:  # the binding lives in the public certificate's metadata
        text = Path(pub).read_text()
        Path(pub).write_text(text.replace("metadata\n", f'metadata\n    devices = "{devices}"\n',
                                          1))
        public, _ = zmq.auth.load_certificate(pub)
        if authorised_devices(d)[public] != tuple(devices.split(",")):
            # an unreadable binding would leave the key free to be any device
            raise ValueError(f"could not bind {pub} to {devices!r}")
    shutil.copy(pub, d / "authorized" / Path(pub).name)
    os.chmod(sec, 0o600)
    if (d / "brain.key_secret").is_file():
        os.chmod(d / "brain.key_secret", 0o600)
    return [*made, Path(pub), Path(sec), d / "authorized" / Path(pub).name]
