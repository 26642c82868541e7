"""A real `opendepot serve` in a subprocess, on a free port, with its own data dir and database."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .processes import stop

REPO = Path(__file__).resolve().parents[2]
OPENDEPOT = [sys.executable, "-m", "opendepot.cli"]


# Data dirs of every server this test process started: their sandboxed builders' host users are removed
# when the session ends (tests/conftest.py), not at each stop, so a restarted server keeps its caches.
STARTED_DATA_DIRS: set[Path] = set()


def remove_builder_users(data_dir: Path) -> None:
    """Deletes the host users (and their subordinate ids) of a data dir's sandboxed builders."""
    from opendepot.builders.sandbox import Sandbox

    sandbox = Sandbox(data_dir, "buildkitd")
    for name in sandbox.users():
        sandbox.remove_user(name)


@contextmanager
def with_builder_users_removed(server: Server, timeout: float = 180) -> Iterator[Server]:
    """The server started for the with block; then stopped, and its builders' host users removed."""
    try:
        with server.running(timeout=timeout):
            yield server
    finally:
        remove_builder_users(server.data_dir)


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port nothing listens on, chosen below the kernel's ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the same range as the source ports of outgoing
    connections, so between this check and the server's own bind any connection on the machine (the test
    cluster's, the server's to its builders) could take it: `opendepot serve` then died with EADDRINUSE.
    Below the range only another listener can, and the bind check sees those.
    """
    ephemeral_low, _high = _ephemeral_ports()
    low = 20000 if ephemeral_low > 21000 else 1024
    for _ in range(200):
        port = random.randrange(low, ephemeral_low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    data_dir: Path
    database_url: str | None
    tls: tuple[Path, Path] | None = None
    extra_args: list[str] = field(default_factory=list)
    # Another tree's src to run (a benchmark's baseline): serve and its admin commands import opendepot there.
    python_path: Path | None = None
    port: int = field(default_factory=free_port)
    buildkit_port: int = field(default_factory=free_port)
    registry_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def registry_host(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def env(self) -> dict[str, str] | None:
        return None if self.python_path is None else {**os.environ, "PYTHONPATH": str(self.python_path)}

    def store_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def start(self, timeout: float = 120) -> Server:
        args = [
            *OPENDEPOT,
            "serve",
            *self.store_args(),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--buildkit-listen",
            f"127.0.0.1:{self.buildkit_port}",
            "--registry-listen",
            f"127.0.0.1:{self.registry_port}",
            *self.extra_args,
        ]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        log = self.log_path.open("ab")
        STARTED_DATA_DIRS.add(self.data_dir)
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env())
        deadline = time.monotonic() + timeout
        with httpx.Client(verify=False) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"opendepot serve exited early:\n{self.log_path.read_text()}")
                try:
                    if client.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"opendepot serve did not become healthy:\n{self.log_path.read_text()}")

    @contextmanager
    def running(self, timeout: float = 120) -> Iterator[Server]:
        """Started for the with block, stopped after it, whatever happens in it."""
        self.start(timeout=timeout)
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process:
            stop(self.process, grace_seconds=10)

    def admin(self, *args: str) -> str:
        """Runs an `opendepot` admin command against this server's store."""
        result = subprocess.run(
            [*OPENDEPOT, *args, *self.store_args()],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env(),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"opendepot {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip()

    def new_organization(self, name: str | None = None) -> tuple[str, str]:
        """A fresh organization and an organization token for it: (org_id, secret)."""
        name = name or f"org-{uuid.uuid4().hex[:8]}"
        org_id, _name, secret = self.admin("orgs", "create", name, "--with-token").split("\t")
        return org_id, secret

    def log_text(self) -> str:
        return self.log_path.read_text()


def create_postgres_database(admin_url: str) -> tuple[str, str]:
    """Creates an empty database; returns (SQLAlchemy URL for it, its name)."""
    import psycopg

    name = f"opendepot_test_{uuid.uuid4().hex[:12]}"
    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = admin_url.rpartition("/")
    return f"{base}/{name}", name


def drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://")
    # FORCE refuses while an autovacuum worker (a process of no role) is in the database unless we hold
    # pg_signal_backend (`./dev` grants it); older roles without it retry until the worker has gone.
    deadline = time.monotonic() + 30
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            try:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def postgres_admin_url() -> str | None:
    return os.environ.get("OPENDEPOT_TEST_POSTGRES_URL") or None
