"""Ray hosting of the brain's models (the daemon shell's side of the model interface).

The fast shell calls ``TransientClassifier.predict`` in-process. The daemon hosts the
same object in a Ray actor, ``ClassifierService``, which merges concurrent requests into
one batch (features and trees are vectorised, so one call on many light curves costs
little more than one call on a few), and hands the brain a ``RemoteClassifier`` with the
same ``predict`` signature, so ``BrainCore`` cannot tell the two apart.

Ray is started locally unless an address is given (``connect``): no dashboard, no
usage reporting, temporary files in ``$BRAIN_RAY_TMP`` (default ``/tmp/sitian-ray``,
short enough for Ray's socket paths). An address that nothing answers is refused at
once (``RayUnreachable``) instead of Ray's retrying for minutes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import numpy as np

from observatory.taxonomy import CLASSES
from policies.classifier import ARTIFACT_DIR, TransientClassifier
from policies.followup import make_policy
from policies.lightcurve_io import MAG_RANGE


class RayUnreachable(ConnectionError):
    """No Ray cluster could be joined at the address given; the message is one line."""


RAY_CLIENT_PORT = 10001  # a ray:// address without a port


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse (``RayUnreachable``) an address of the form HOST:PORT or ray://HOST[:PORT]
    where nothing accepts a connection: Ray would retry for minutes. ``auto`` (the
    cluster this machine is part of) is left to Ray, which fails at once without one."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep and address.startswith("ray://"):
        host, port = hostport, str(RAY_CLIENT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayUnreachable(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT "
                             "or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RayUnreachable(f"no Ray cluster at {address} ({reason}); start one with "
                             "`ray start --head` or give its head's address") from None


def connect(address: str | None = None, num_cpus: int | None = None,
            temp_dir: Path | None = None):
    """Join the Ray cluster at ``address``, or start a local Ray (idempotent)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray  # lazy: heavy optional library

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")  # e.g. inside `ray job submit`
    kwargs = {"include_dashboard": False, "log_to_driver": False,
              "configure_logging": False}
    if address:
        probe_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            # e.g. `auto` with no cluster here, or a token the cluster refuses
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayUnreachable(f"cannot join the Ray cluster at {address}: "
                                 f"{first}") from None
    else:
        tmp = Path(temp_dir or os.environ.get("BRAIN_RAY_TMP", "/tmp/sitian-ray"))
        tmp.mkdir(parents=True, exist_ok=True)
        ray.init(num_cpus=num_cpus or max(os.cpu_count() or 2, 2), _temp_dir=str(tmp),
                 **kwargs)
    return ray


def check_table(obj, mjd, band, mag, err, n_objects=None):
    """A request's detection table as arrays, or ValueError with a one-line reason: a
    malformed request is refused alone and never reaches (or spoils) a shared batch."""
    obj = np.asarray(obj)
    cols = [np.asarray(c) for c in (mjd, band, mag, err)]
    if obj.ndim != 1 or any(c.shape != obj.shape for c in cols):
        raise ValueError("detection columns must be 1-d arrays of one length")
    if obj.size and (not np.issubdtype(obj.dtype, np.integer) or obj.min() < 0):
        raise ValueError("object indices must be non-negative integers")
    obj = obj.astype(np.int64)
    mjd, band, mag, err = (cols[0].astype(float), cols[1].astype(np.int64),
                           cols[2].astype(float), cols[3].astype(float))
    if obj.size and (band.min() < 0 or band.max() > 2):
        raise ValueError("band indices must be 0, 1 or 2 (g, r, i)")
    if not (np.isfinite(mjd).all() and np.isfinite(mag).all() and np.isfinite(err).all()):
        raise ValueError("times, magnitudes and errors must be finite")
    if obj.size > 1 and np.any(np.diff(obj) < 0):
        raise ValueError("detections must be sorted by object")
    n = int(n_objects if n_objects is not None else (obj.max() + 1 if obj.size else 0))
    if obj.size and obj.max() >= n:
        raise ValueError("object index beyond n_objects")
    return obj, mjd, band, mag, err, n


def _per_object(values, n: int, cols: int, what: str) -> np.ndarray:
    """A request's per-object array (n, cols) as floats, all NaN (unknown) for None, or
    ValueError if its shape is not that."""
    if values is None:
        return np.full((n, cols), np.nan)
    values = np.asarray(values, dtype=float)
    if values.shape != (n, cols):
        raise ValueError(f"{what} must be an array of shape ({n}, {cols}), got "
                         f"{values.shape}")
    return values


def check_radec(radec, n: int) -> np.ndarray:
    """A request's per-object positions (n, 2) in degrees (NaN: unknown; None: none
    known), or ValueError with a one-line reason."""
    radec = _per_object(radec, n, 2, "positions")
    known = np.isfinite(radec).all(axis=1)
    if np.any(~known & np.isfinite(radec).any(axis=1)):
        raise ValueError("a position needs both ra_deg and dec_deg")
    ra, dec = radec[known, 0], radec[known, 1]
    if np.any((ra < 0) | (ra >= 360) | (dec < -90) | (dec > 90)):
        raise ValueError("positions must have 0 <= ra_deg < 360 and -90 <= dec_deg <= 90")
    return radec


def check_ref(ref, n: int) -> np.ndarray:
    """A request's per-object reference magnitudes (n, 3) for g, r, i (NaN: unknown,
    +inf: nothing in the reference; None: none known), or ValueError with a one-line
    reason."""
    ref = _per_object(ref, n, 3, "reference magnitudes")
    lo, hi = MAG_RANGE
    if np.any(ref == -np.inf) or np.any(np.isfinite(ref) & ((ref < lo) | (ref > hi))):
        raise ValueError(f"reference magnitudes must lie in {lo:g}..{hi:g} (+inf: none, "
                         "NaN: unknown)")
    return ref


class ClassifierService:
    """Batches concurrent ``predict`` calls into one model call.

    A request waits at most ``max_wait_s`` for others to join it; a batch closes early
    once it holds ``max_objects`` light curves. The model is loaded from ``directory``
    (the shipped artefact by default) when the actor starts, so a restarted actor is the
    same as the old one: it holds no state but the model.
    """

    def __init__(self, directory: str | None = None, max_wait_s: float = 0.005,
                 max_objects: int = 20_000):

        self.model = TransientClassifier.load(Path(directory) if directory else ARTIFACT_DIR)
        self.max_wait_s = max_wait_s
        self.max_objects = max_objects
        self._pending: list = []
        self._n_pending = 0
        self._flusher: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

    async def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None,
                      radec=None, ref=None):
        obj, mjd, band, mag, err, n = check_table(obj, mjd, band, mag, err, n_objects)
        radec = check_radec(radec, n)
        ref = check_ref(ref, n)
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(((obj, mjd, band, mag, err, radec, ref), n, fut))
        self._n_pending += n
        self.requests += 1
        if self._n_pending >= self.max_objects:
            self._flush()
        elif self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_later())
        return await fut

    async def _flush_later(self):
        await asyncio.sleep(self.max_wait_s)
        self._flusher = None
        self._flush()

    def _flush(self):
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        batch, self._pending, self._n_pending = self._pending, [], 0
        if not batch:
            return
        offsets = np.cumsum([0] + [n for _, n, _ in batch])
        obj = np.concatenate([t[0] + off for (t, _, _), off in zip(batch, offsets, strict=False)])
        cols = [np.concatenate([t[c] for t, _, _ in batch]) for c in range(1, 5)]
        radec = np.concatenate([t[5] for t, _, _ in batch]).reshape(-1, 2)
        ref = np.concatenate([t[6] for t, _, _ in batch]).reshape(-1, 3)
        try:
            prob = self.model.predict(obj, *cols, int(offsets[-1]), radec, ref)
        except Exception as exc:  # requests were checked alone; a model failure is
            # reported to every waiting caller instead of leaving them hanging
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        for (_, _, fut), lo, hi in zip(batch, offsets[:-1], offsets[1:], strict=True):
            if not fut.done():
                fut.set_result(prob[lo:hi])

    def classes(self) -> tuple[str, ...]:
        return tuple(self.model.classes)

    def stats(self) -> dict:
        return {"requests": self.requests, "batches": self.batches}


def call_with_restarts(method, *args, timeout_s: float = 60.0):
    """``method.remote(*args)``, asked again while its actor is restarting (Ray restarts
    a dead actor; a call that reached the dead one fails with an actor error). The
    actors hold no state but their models, so asking again is safe: no decision is
    lost to a restart."""
    import ray  # lazy: heavy optional library

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(method.remote(*args), timeout=max(1.0, deadline - time.monotonic()))
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class RemoteClassifier:
    """The in-process classifier's interface, answered by a ``ClassifierService`` actor."""

    def __init__(self, handle, timeout_s: float = 60.0):
        import ray  # lazy: heavy optional library

        self.handle = handle
        self.timeout_s = timeout_s
        self.classes = tuple(ray.get(handle.classes.remote(), timeout=timeout_s))
        if self.classes != CLASSES:
            raise ValueError("classifier actor serves another taxonomy")

    def predict(self, obj, mjd, band, mag, err, n_objects: int | None = None,
                radec=None, ref=None) -> np.ndarray:
        return call_with_restarts(self.handle.predict, obj, mjd, band, mag, err, n_objects,
                                  radec, ref, timeout_s=self.timeout_s)


def start_classifier(directory: str | None = None, name: str = "classifier",
                     max_wait_s: float = 0.005, max_objects: int = 20_000):
    """The classifier actor (restarted by Ray if its process dies; named, so a
    restarted daemon finds it again) and a ``RemoteClassifier`` in front of it."""
    import ray  # lazy: heavy optional library

    actor = ray.remote(ClassifierService).options(
        name=name, get_if_exists=True, max_restarts=-1, max_task_retries=3,
        max_concurrency=1000, num_cpus=1,
    ).remote(directory, max_wait_s, max_objects)
    return RemoteClassifier(actor)


class PolicyService:
    """The target-selection policy as an actor: ``choose(table)`` with a
    ``policies.followup.CandidateTable``. It holds only the exported network (or a
    baseline), so a restarted actor answers as the old one did."""

    def __init__(self, name: str = "rl", seed: int = 0, directory: str | None = None):
        self.policy = make_policy(name, seed, directory)
        self.calls = 0

    def choose(self, table) -> int:
        self.calls += 1
        return int(self.policy.choose(table))

    def max_candidates(self):
        return getattr(self.policy, "max_candidates", None)

    def stats(self) -> dict:
        return {"calls": self.calls, "policy": self.policy.name}


class RemotePolicy:
    """A policy object for the follow-up manager, answered by a ``PolicyService``."""

    def __init__(self, handle, timeout_s: float = 30.0):
        import ray  # lazy: heavy optional library

        self.handle = handle
        self.timeout_s = timeout_s
        self.max_candidates = ray.get(handle.max_candidates.remote(), timeout=timeout_s)
        self.name = ray.get(handle.stats.remote(), timeout=timeout_s)["policy"]

    def choose(self, table) -> int:
        return int(call_with_restarts(self.handle.choose, table, timeout_s=self.timeout_s))


def start_policy(name: str = "rl", seed: int = 0, directory: str | None = None,
                 actor_name: str = "policy"):
    """The policy actor (named, restarted by Ray if its process dies) and a
    ``RemotePolicy`` in front of it."""
    import ray  # lazy: heavy optional library

    actor = ray.remote(PolicyService).options(
        name=actor_name, get_if_exists=True, max_restarts=-1, max_task_retries=3, num_cpus=0,
    ).remote(name, seed, directory)
    return RemotePolicy(actor)
