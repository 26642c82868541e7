"""The registry process (CNCF distribution, Debian's `docker-registry`), run by the supervisor.

Its config is generated (JSON, which is YAML) under `<data-dir>/registry/`: token auth with opendepot as
the issuer, deletes enabled, notifications to the API. Garbage collection needs the registry stopped (or
read-only), so it runs when a delete asked for it and the registry has been idle for
`--registry-gc-idle-seconds`: the supervisor stops the registry, runs `docker-registry garbage-collect`,
and starts it again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from opendepot.builds import queries as build_queries
from opendepot.clock import utcnow
from opendepot.datadir import DataDir
from opendepot.files import write_private
from opendepot.processes import parent_death_signal, stop_leftover, terminate
from opendepot.store import Store

from . import queries
from .client import RegistryClient
from .keys import ISSUER, SERVICE, TokenSigner

log = logging.getLogger("opendepot.registry")


def spawn_registry(
    binary: str, config_path: Path, log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`registry serve CONFIG` (the project registry or the mirror), its output appended to LOG, in a session
    of its own; it dies with its supervisor by SIGKILL: nothing a registry holds must outlive it, and SIGKILL
    cannot be blocked."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [binary, "serve", str(config_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGKILL),  # noqa: PLW1509 - prctl only, preloaded
        )


async def until_answering(
    process: subprocess.Popen[bytes], answers: Callable[[], Awaitable[bool]], what: str, log_path: Path
) -> None:
    """Waits (10 s at most) for a registry just spawned to answer; fails at once if it exited."""
    for _ in range(200):
        if await answers():
            return
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start; see {log_path}")


@dataclass(frozen=True, slots=True)
class ProcessSettings:
    binary: str
    listen: str
    paths: DataDir
    realm: str
    events_url: str
    storage: str
    gc_idle: timedelta


def storage_config(storage: str, data_dir: Path) -> dict[str, Any]:
    """`""` → the filesystem under the data dir; `s3://bucket/root?region=…&regionendpoint=…` → the S3 driver,
    every query parameter passed through as a driver option."""
    if not storage:
        return {"filesystem": {"rootdirectory": str(DataDir(data_dir).registry_storage)}}
    parts = urlsplit(storage)
    if parts.scheme == "s3":
        options: dict[str, Any] = dict(parse_qsl(parts.query))
        options["bucket"] = parts.netloc
        if parts.path.strip("/"):
            options["rootdirectory"] = "/" + parts.path.strip("/")
        options.setdefault("region", "us-east-1")
        return {"s3": options}
    if parts.scheme in ("", "file"):
        return {"filesystem": {"rootdirectory": parts.path}}
    raise ValueError(f"--registry-storage: unsupported storage {storage!r} (use a directory or s3://…)")


def registry_environment(environ: Mapping[str, str], storage: str) -> dict[str, str]:
    """distribution's s3 driver (2.8) panics at start when AWS_CA_BUNDLE is set: the AWS SDK cannot add a CA
    bundle to the driver's own HTTP transport. The driver trusts the system's CAs; the variable is dropped."""
    env = dict(environ)
    if storage.startswith("s3://") and env.pop("AWS_CA_BUNDLE", None) is not None:
        log.warning("AWS_CA_BUNDLE is not passed to the registry: its s3 driver cannot use it (system CAs)")
    return env


def registry_config(settings: ProcessSettings, signer: TokenSigner, http_secret: str) -> dict[str, Any]:
    return {
        "version": "0.1",
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            **storage_config(settings.storage, settings.paths.root),
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {
                "uploadpurging": {"enabled": True, "age": "24h", "interval": "1h", "dryrun": False}
            },
        },
        "http": {
            "addr": settings.listen,
            "secret": http_secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "auth": {
            "token": {
                "realm": settings.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(signer.cert_path),
            }
        },
        "notifications": {
            "endpoints": [
                {
                    "name": "opendepot",
                    "url": settings.events_url,
                    "headers": {"Authorization": [f"Bearer {signer.events_secret}"]},
                    "timeout": "10s",
                    "threshold": 10,
                    "backoff": "1s",
                    "ignore": {"actions": ["pull"], "mediatypes": ["application/octet-stream"]},
                }
            ]
        },
    }


class RegistryProcess:
    def __init__(
        self,
        settings: ProcessSettings,
        signer: TokenSigner,
        store: Store,
        client: RegistryClient,
        gc_allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        # With several nodes on one store, only the holder of the singular duties collects garbage.
        self.gc_allowed = gc_allowed
        self.settings = settings
        self.signer = signer
        self.store = store
        self.client = client
        self.directory = settings.paths.registry
        self.config_path = self.directory / "config.json"
        self.pid_path = settings.paths.registry_pid
        self._process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        # One HTTP secret for every node's registry (from the store): an upload begun through one registry
        # may continue through another behind the same address.
        self.signer.write_cert()
        config = registry_config(self.settings, self.signer, self.signer.http_secret)
        write_private(self.config_path, json.dumps(config, indent=2))

    def _reap_stale(self) -> None:
        """A registry left by an earlier supervisor (killed hard) still holds the port: stop it."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_path.read_text())
            if str(self.config_path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                stop_leftover(pid)

    async def start(self) -> None:
        self.write_config()
        self._reap_stale()
        log_path = self.settings.paths.registry_log
        self._process = spawn_registry(
            self.settings.binary,
            self.config_path,
            log_path,
            registry_environment(os.environ, self.settings.storage),
        )
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(str(self._process.pid))
        await until_answering(self._process, self.client.ping, "the registry", log_path)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await terminate(process)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    async def collect_garbage(self) -> bool:
        """Stops the registry, deletes the blobs no manifest of any repository references, starts it again.
        Never `--delete-untagged`: distribution 2.8 counts the per-platform manifests of a tagged index as
        untagged and deletes them with their layers, which broke every saved image of every project (each
        `depot build --save` pushes an index). DeleteImage deletes the manifests it frees itself."""
        started = utcnow()
        await self.stop()
        try:
            result = await asyncio.create_subprocess_exec(
                self.settings.binary,
                "garbage-collect",
                str(self.config_path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await result.communicate()
        finally:
            await self.start()
        if result.returncode != 0:
            log.error("registry garbage collection failed: %s", err.decode(errors="replace")[-2000:])
            return False

        def done(session: Any) -> None:
            queries.maintenance(session).gc_finished_at = started

        await self.store.run(done)
        log.info("registry garbage collection done")
        return True

    def _gc_due(self, session: Any) -> bool:
        state = queries.maintenance(session)
        if not state.collection_waiting:
            return False
        if build_queries.running_count(session):
            return False
        last = max(filter(None, [queries.last_push(session), state.gc_requested_at]))
        return utcnow() - last >= self.settings.gc_idle

    name = "registry supervision"
    interval = 2.0

    async def run_once(self) -> None:
        """Keeps the registry up and collects garbage when due."""
        if not self.alive():
            log.warning("the registry exited; starting it again")
            await self.start()
        if self.gc_allowed() and await self.store.run(self._gc_due):
            await self.collect_garbage()
