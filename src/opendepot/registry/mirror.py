"""A pull-through cache for one upstream registry (`--registry-mirror URL`): a second distribution process in
proxy mode, run by the supervisor beside the project registry, which builders use as a mirror of that
upstream. The first pull of a layer fetches it from upstream once; every later pull, by any project, is
served from the cache under `<data-dir>/registry-mirror/`.

It holds public images only: no token auth (it answers only where it listens, loopback by default), no
pushes (distribution refuses them in proxy mode), no upstream credentials."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from opendepot.datadir import DataDir
from opendepot.files import write_private
from opendepot.processes import terminate
from opendepot.registry.process import spawn_registry, until_answering

log = logging.getLogger("opendepot.registry")

# The hosts image references name, for upstreams whose API lives elsewhere.
_REFERENCE_HOSTS = {"registry-1.docker.io": "docker.io", "index.docker.io": "docker.io"}


@dataclass(frozen=True, slots=True)
class MirrorSettings:
    binary: str
    upstream: str
    listen: str
    paths: DataDir

    @property
    def upstream_host(self) -> str:
        """The registry host image references use for the upstream (`docker.io` for Docker Hub)."""
        netloc = urlsplit(self.upstream).netloc
        return _REFERENCE_HOSTS.get(netloc, netloc)

    @property
    def url(self) -> str:
        return f"http://{self.listen}"


def check_upstream(url: str) -> str:
    """The upstream must be an http(s) URL with a host and nothing past it; returns it without a slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise ValueError(
            f"--registry-mirror: {url!r} is not a registry URL such as https://registry-1.docker.io"
        )
    return f"{parts.scheme}://{parts.netloc}"


def mirror_config(settings: MirrorSettings) -> dict[str, Any]:
    return {
        "version": "0.1",
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(settings.paths.registry_mirror / "storage")},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": settings.listen, "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "proxy": {"remoteurl": settings.upstream},
    }


class MirrorProcess:
    def __init__(self, settings: MirrorSettings) -> None:
        self.settings = settings
        self.config_path = settings.paths.registry_mirror / "config.json"
        self._process: subprocess.Popen[bytes] | None = None

    async def _answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(f"{self.settings.url}/v2/")).status_code == 200
        return False

    async def start(self) -> None:
        write_private(self.config_path, json.dumps(mirror_config(self.settings), indent=2))
        log_path = self.settings.paths.registry_mirror_log
        self._process = spawn_registry(self.settings.binary, self.config_path, log_path)
        await until_answering(self._process, self._answers, "the registry mirror", log_path)
        log.info("pull-through cache of %s on %s", self.settings.upstream, self.settings.listen)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await terminate(process)

    name = "registry mirror supervision"
    interval = 2.0

    async def run_once(self) -> None:
        """Restarts the mirror if it exited; builders fall back to the upstream meanwhile."""
        if self._process is not None and not self.alive():
            log.warning("the registry mirror exited; starting it again")
            await self.start()
