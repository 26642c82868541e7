"""The seam between the reconciler and wherever builders run. The reconciler speaks only this interface;
`local.py` runs buildkitd processes on this host, and a cluster backend (Kubernetes) implements the same."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from opendepot.projects.policy import GIB, CacheSetting

DEFAULT_DISK_MAX_BYTES = 64 * GIB  # the default cache policy's 50 GiB and its quarter of room


def cache_volume_bytes(keep_bytes: int, max_bytes: int) -> int:
    """The size of a builder's own cache volume: room for the cache policy plus a quarter (BuildKit's GC
    brings the cache back under keepBytes after a build, so a build may overshoot it for a while), in whole
    GiB, at least 1; never more than the operator's max_bytes (--builder-disk-max-mib)."""
    whole_gib = -(-keep_bytes * 5 // (4 * GIB))  # ceil(keep_bytes * 1.25 / GIB)
    return min(max(1, whole_gib) * GIB, max_bytes)


def gc_keep_bytes(keep_bytes: int, max_bytes: int) -> int:
    """What BuildKit's GC keeps: the cache policy's size, or four fifths of a volume the operator capped
    below it. A GC that aimed above its volume would never run before the volume filled, and a failed step's
    layer would stay there: every later build of the project failed with ENOSPC."""
    return min(keep_bytes, cache_volume_bytes(keep_bytes, max_bytes) * 4 // 5)


@dataclass(frozen=True, slots=True)
class BuilderSpec:
    project_id: str
    platform: str
    cache: CacheSetting
    hardware: str = "16x32"
    # BuildKit entitlements the operator allowed for the project (network.host, security.insecure).
    entitlements: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordedBuilder:
    """A builder an earlier supervisor recorded as not stopped (its row), for reap_leftovers."""

    project_id: str
    platform: str
    pid: int | None


@runtime_checkable
class CacheRelief(Protocol):
    """A backend whose builders' caches live in volumes of a fixed size: after a build it can bring a volume
    fuller than BuildKit's GC target back under it at once, where BuildKit's own GC runs at most once a
    minute (a build that filled the volume left the next one without room until then)."""

    async def relieve(self, project_id: str, platform: str) -> int | None:
        """Prunes the builder's cache to its GC target if its volume is over it: the bytes it freed, or None
        when nothing was over or it could not tell."""
        ...


@runtime_checkable
class WorkerProbe(Protocol):
    """A backend that can tell a wedged builder (socket accepting, BuildKit not answering) from a live one;
    the reconciler restarts wedged builders of such backends."""

    async def responsive(self, project_id: str, platform: str, answer_within: float) -> bool:
        """Whether BuildKit answers ListWorkers within answer_within seconds."""
        ...


class Backend(Protocol):
    async def reap_leftovers(self, recorded: Sequence[RecordedBuilder]) -> None:
        """At start, before anything else: stop builders an earlier supervisor left running; none is
        adopted (the reconciler then marks every recorded builder stopped)."""
        ...

    async def start(self, spec: BuilderSpec) -> int: ...
    async def ready(self, project_id: str, platform: str) -> bool: ...
    def alive(self, project_id: str, platform: str) -> bool: ...
    async def stop(self, project_id: str, platform: str) -> None: ...
    async def stop_all(self) -> None: ...
    async def disk_usage(self, project_id: str, platform: str) -> int | None: ...
    async def discard(self, project_id: str, platform: str) -> None:
        """After stop, on ResetProject/DeleteProject: drop what the backend keeps of the builder outside the
        project's cache directory (a cache volume)."""
        ...

    async def connect(
        self, project_id: str, platform: str, protocol: Callable[[], asyncio.BaseProtocol]
    ) -> asyncio.Transport:
        """A connection to the builder's BuildKit API driven by protocol (as loop.create_connection)."""
        ...

    async def connect_socket(self, project_id: str, platform: str) -> socket.socket:
        """A connected, non-blocking socket to the builder's BuildKit API (TLS already established where the
        link needs it), for the gateway's relay threads."""
        ...
