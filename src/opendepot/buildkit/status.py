"""BuildKit's Status messages (moby.buildkit.v1.StatusResponse) as the builds domain's step events."""

from __future__ import annotations

from datetime import datetime

from opendepot.builds.steps import LogChunk, VertexUpdate
from opendepot.gen.moby.buildkit.v1 import control_pb


def _when(ts: object) -> datetime | None:
    """None for no time, and for one past datetime's range (the CLI relays what the build's status says: a
    time there ended the whole status stream with an internal error)."""
    if ts is None:
        return None
    try:
        return ts.to_datetime()  # type: ignore[attr-defined,no-any-return]
    except (OverflowError, ValueError):
        return None


def events(message: control_pb.StatusResponse) -> tuple[list[VertexUpdate], list[LogChunk]]:
    """A BuildKit StatusResponse as domain events."""
    vertices = [
        VertexUpdate(
            digest=v.digest,
            name=v.name,
            started=_when(v.started),
            completed=_when(v.completed),
            cached=v.cached,
            error=v.error,
        )
        for v in message.vertexes
    ]
    logs = [
        LogChunk(digest=entry.vertex, stream=int(entry.stream), at=_when(entry.timestamp), data=entry.msg)
        for entry in message.logs
    ]
    return vertices, logs


def decode(raw: bytes) -> tuple[list[VertexUpdate], list[LogChunk]]:
    """A serialized StatusResponse (one gRPC message of a Control/Status stream) as domain events."""
    return events(control_pb.StatusResponse.from_binary(raw))
