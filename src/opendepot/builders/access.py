"""What API workers do to get a build onto a builder: take the lease, and once the project's builder runs,
hand out the gateway endpoint with a client certificate for this (build, platform)."""

from __future__ import annotations

import datetime as dt
import platform as host_platform
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from opendepot.auth import Principal
from opendepot.builds import service as builds
from opendepot.builds.platform import Platform
from opendepot.errors import FailedPrecondition
from opendepot.pki.authority import Authority, ClientIdentity, IssuedCertificate, server_name
from opendepot.store import Store

from . import service
from .states import BuilderState

CLIENT_CERT_LIFETIME = dt.timedelta(hours=24)
# A build's certificate is handed out again for this long (the CLI asks again on every reconnect); past it,
# a fresh one still has most of its lifetime ahead.
REISSUE_AFTER_SECONDS = 3600.0
MAX_KEPT_CERTIFICATES = 1024
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def supported_platforms() -> tuple[str, ...]:
    """The host's own architecture, plus the other where a QEMU binfmt handler is registered."""
    arm = host_platform.machine() in ("aarch64", "arm64")
    native = Platform.ARM64 if arm else Platform.AMD64
    other, handler = (Platform.AMD64, "qemu-x86_64") if arm else (Platform.ARM64, "qemu-aarch64")
    return (native, other) if (BINFMT / handler).exists() else (native,)


@dataclass(frozen=True, slots=True)
class Connection:
    endpoint: str
    server_name: str
    cert_pem: str
    key_pem: str
    ca_pem: str


class BuilderAccess:
    def __init__(
        self,
        store: Store,
        authority: Authority,
        gateway_host: str,
        gateway_port: int,
        platforms: tuple[str, ...] | None = None,
        wait_ms: int = 500,
    ) -> None:
        self.store = store
        self.authority = authority
        self.endpoint = f"tcp://{gateway_host}:{gateway_port}"
        self.platforms = platforms or supported_platforms()
        self.wait_ms = wait_ms
        self._issued: OrderedDict[ClientIdentity, tuple[float, IssuedCertificate]] = OrderedDict()

    def _certificate(self, identity: ClientIdentity) -> IssuedCertificate:
        now = time.monotonic()
        kept = self._issued.get(identity)
        if kept is not None and now - kept[0] < REISSUE_AFTER_SECONDS:
            return kept[1]
        # Inline: with the CA cached, issuing is ~0.3 ms of CPU, less than a hop to a worker thread.
        issued = self.authority.issue_client(identity, CLIENT_CERT_LIFETIME)
        self._issued[identity] = (now, issued)
        self._issued.move_to_end(identity)
        while len(self._issued) > MAX_KEPT_CERTIFICATES:
            self._issued.popitem(last=False)
        return issued

    async def acquire(self, principal: Principal, build_id: str, platform: str) -> Connection | None:
        """None while the builder is starting (answer pending); the connection once it runs."""
        builds.check_platform(platform, self.platforms)
        project_id, machine = await self.store.run_short(
            lambda s: service.acquire(s, principal, build_id, platform)
        )
        if machine is not None and machine.state == BuilderState.FAILED:
            raise FailedPrecondition(f"the {platform} builder failed to start: {machine.error}")
        if machine is None or machine.state != BuilderState.RUNNING:
            return None
        identity = ClientIdentity(project_id=project_id, build_id=build_id, platform=platform)
        issued = self._certificate(identity)
        return Connection(
            endpoint=self.endpoint,
            server_name=server_name(project_id),
            cert_pem=issued.cert_pem,
            key_pem=issued.key_pem,
            ca_pem=issued.ca_pem,
        )
