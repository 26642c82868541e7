"""Build steps and their logs, from BuildKit status updates (the gateway's tap and the CLI's own reports).

A vertex arrives many times (queued, started, completed); each update is merged into one step: the earliest
start, the latest completion, cached if any update says so, the last error. Log chunks are split into lines
(a line cut across two chunks becomes two lines). Each build keeps at most `cap` bytes of log; past that one
marker line says so and the rest is dropped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from opendepot.clock import utcnow

from .models import LogLine, LogVolume, Step

DEFAULT_LOG_CAP = 10 * 1024 * 1024
TRUNCATED = "[opendepot] log truncated: this build printed more than {cap} bytes; the rest was not kept"


@dataclass(frozen=True, slots=True)
class VertexUpdate:
    digest: str
    name: str
    started: datetime | None
    completed: datetime | None
    cached: bool
    error: str


@dataclass(frozen=True, slots=True)
class LogChunk:
    digest: str
    stream: int
    at: datetime | None
    data: bytes


def _step(session: Session, steps: dict[str, Step], build_id: str, digest: str) -> Step:
    step = steps.get(digest)
    if step is None:
        stmt = select(Step).where(Step.build_id == build_id, Step.digest == digest)
        step = session.scalars(stmt).first()
        if step is None:
            step = Step(
                build_id=build_id,
                digest=digest,
                name="",
                cached=False,
                has_logs=False,
                started_at=utcnow(),
                started_known=False,
            )
            session.add(step)
        steps[digest] = step
    return step


def apply(
    session: Session,
    build_id: str,
    vertices: Sequence[VertexUpdate],
    logs: Sequence[LogChunk],
    cap: int = DEFAULT_LOG_CAP,
) -> None:
    steps: dict[str, Step] = {}
    for v in vertices:
        step = _step(session, steps, build_id, v.digest)
        step.name = v.name or step.name
        if v.started is not None and (
            not step.started_known or step.started_at is None or v.started < step.started_at
        ):
            step.started_at, step.started_known = v.started, True
        if v.completed is not None:
            step.completed_at = v.completed
        step.cached = step.cached or v.cached
        if v.error:
            step.error = v.error
    if logs:
        _append_logs(session, steps, build_id, logs, cap)
    session.flush()


def _append_logs(
    session: Session, steps: dict[str, Step], build_id: str, logs: Sequence[LogChunk], cap: int
) -> None:
    volume = session.get(LogVolume, build_id)
    if volume is None:
        volume = LogVolume(build_id=build_id, bytes=0, truncated=False)
        session.add(volume)
    for chunk in logs:
        if volume.truncated:
            return
        if volume.bytes + len(chunk.data) > cap:
            volume.truncated = True
            session.add(
                LogLine(
                    build_id=build_id,
                    digest=chunk.digest,
                    stream=chunk.stream,
                    logged_at=chunk.at or utcnow(),
                    text=TRUNCATED.format(cap=cap),
                )
            )
            _step(session, steps, build_id, chunk.digest).has_logs = True
            return
        volume.bytes += len(chunk.data)
        text = chunk.data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for line in lines:
            session.add(
                LogLine(
                    build_id=build_id,
                    digest=chunk.digest,
                    stream=chunk.stream,
                    logged_at=chunk.at or utcnow(),
                    text=line.rstrip("\r"),
                )
            )
        if lines:
            _step(session, steps, build_id, chunk.digest).has_logs = True
