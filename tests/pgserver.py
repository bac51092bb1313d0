"""A real PostgreSQL server for the tests (docs/store.md): started once per session.

The server is Debian's ``postgresql`` package (``.ci/run`` installs it): ``initdb`` makes
a throwaway cluster in a new directory under the system temp directory, and ``postgres``
runs as a child of this process, listening on a free loopback port (and on a unix
socket in that directory), with trust authentication and durability off (fsync): test
data only. PostgreSQL refuses to run as root, so when the tests run as root the cluster
belongs to the ``postgres`` system user the package creates, and initdb and the server
run as that user. The server is stopped (fast shutdown, then killed if it lingers) and
the directory removed when the session ends, whatever the tests did; should the tests'
process be killed outright, the server gets a fast shutdown from the kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUPERUSER = "brain"
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
PACKAGE_HINT = ("install Debian's postgresql package (apt-get install postgresql; "
                ".ci/run does)")


class PgServerError(RuntimeError):
    """The test server could not be found or started (one paragraph, for the log)."""


def find_bindir() -> Path:
    """The directory of initdb and postgres: the newest /usr/lib/postgresql/<ver>/bin
    (Debian), else wherever ``pg_config --bindir`` or PATH says."""
    def version(d: str) -> tuple:
        v = Path(d).parent.name
        return tuple(int(x) for x in v.split(".") if x.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        r = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                           check=False, timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            candidates.append(r.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for d in candidates:
        if all(os.access(Path(d) / exe, os.X_OK) for exe in ("initdb", "postgres")):
            return Path(d)
    raise PgServerError("PostgreSQL server binaries (initdb, postgres) not found under "
                        f"/usr/lib/postgresql/*/bin or on PATH: {PACKAGE_HINT}")


def _die_with_parent() -> None:
    """In the server's process before it starts: SIGINT (fast shutdown) when the tests'
    process dies, even by SIGKILL, so that no server outlives the session (Linux)."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGINT))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One throwaway PostgreSQL cluster and its server process."""

    def __init__(self, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        self.user = None  # run as this system user (when we are root)
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise PgServerError("running as root, and PostgreSQL refuses root, but "
                                    "there is no 'postgres' system user to run it as: "
                                    f"{PACKAGE_HINT}") from None
        self.root = Path(tempfile.mkdtemp(prefix="brain-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        atexit.register(self.stop)  # should the session end without its teardown

    # Running as the cluster's owner ---------------------------------------------------
    def _as_owner(self) -> dict:
        env = {"PATH": f"{self.bindir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C",
               "TZ": "UTC", "HOME": str(self.root)}
        kw = {"cwd": self.root, "env": env}
        if self.user is not None:
            kw.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        return kw

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    # Life cycle -----------------------------------------------------------------------
    def start(self, tries: int = 3) -> PgServer:
        self._chown(self.root)
        self.log.touch()
        self._chown(self.log)
        r = subprocess.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                            "--no-instructions"],
                           capture_output=True, text=True, timeout=120, check=False,
                           **self._as_owner())
        if r.returncode != 0:
            self.stop()
            raise PgServerError(f"initdb failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        # The port is free when picked, but another process may take it before the
        # server binds it: then the server exits at once, and another port is tried.
        for _ in range(tries):
            self.port = _free_port()
            if self._launch():
                return self
        log = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise PgServerError(f"postgres did not start ({self.bindir}): {log}")

    def _launch(self) -> bool:
        settings = {"listen_addresses": "127.0.0.1", "port": self.port,
                    "unix_socket_directories": str(self.root), "fsync": "off",
                    "synchronous_commit": "off", "full_page_writes": "off",
                    "max_connections": 40, "shared_buffers": "32MB"}
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for k, v in settings.items():
            args += ["-c", f"{k}={v}"]
        with self.log.open("a") as log:
            # its own session: a Ctrl-C at the terminal reaches the tests, which stop it
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent, **self._as_owner())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._accepts():
                return True
            time.sleep(0.05)
        self._terminate()
        return False

    def _accepts(self) -> bool:
        import psycopg  # lazy: only the PostgreSQL tests need it

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg  # lazy: only the PostgreSQL tests need it

        with psycopg.connect(self.url("postgres"), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_schema(self, dbname: str, name: str) -> str:
        """A new, empty schema in database ``dbname`` (quicker to make than a database);
        returns a URL whose sessions see it first (``search_path``), so that tables made
        through it go there."""
        import psycopg  # lazy: only the PostgreSQL tests need it

        with psycopg.connect(self.url(dbname), autocommit=True) as db:
            db.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url(dbname)}?options=-c%20search_path%3D{name}"

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions, then exits
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        self._terminate()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
