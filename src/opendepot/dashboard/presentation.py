"""What the pages show, computed from domain objects: durations, states, a step's platform and Dockerfile
instruction, the waterfall's geometry. No I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from opendepot.builds.models import Build
from opendepot.builds.service import StepRecord, Summary
from opendepot.clock import as_utc, utcnow

# BuildKit names a Dockerfile step "[linux/arm64 2/5] RUN make" (the platform only in multi-platform builds),
# "[stage-1 3/4] COPY ...", "[internal] load build context".
_NAME = re.compile(
    r"^\[(?:(?P<platform>[a-z0-9]+/[a-z0-9]+(?:/[a-z0-9]+)?) )?(?P<position>[^\]]*)\] (?P<rest>.*)$"
)
_KEYWORDS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return max(0.0, (as_utc(end or utcnow()) - as_utc(start)).total_seconds())


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h {rest // 60:02d}m"


def when(at: datetime | None) -> str:
    return as_utc(at).strftime("%Y-%m-%d %H:%M:%S UTC") if at is not None else "-"


def human_bytes(size: int | float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


@dataclass(frozen=True, slots=True)
class StepRow:
    id: int
    digest: str
    name: str
    platform: str
    position: str
    instruction: str
    keyword: str
    state: str  # cached, error, done, running, queued
    duration: str
    error: str
    has_logs: bool
    # Waterfall geometry in percent of the build's span.
    offset: float
    width: float


def _state(step: StepRecord, build_finished: bool) -> str:
    if step.error:
        return "error"
    if step.cached:
        return "cached"
    if step.completed_at is not None:
        return "done"
    if not step.started_known:
        return "queued"
    return "canceled" if build_finished else "running"


def step_rows(build: Build, steps: Sequence[StepRecord], default_platform: str) -> list[StepRow]:
    finished = build.finished_at is not None
    starts = [as_utc(s.started_at) for s in steps if s.started_at is not None]
    origin = min([as_utc(build.started_at or build.created_at), *starts])
    ends = [as_utc(s.completed_at) for s in steps if s.completed_at is not None]
    end = as_utc(build.finished_at) if build.finished_at else utcnow()
    end = max([end, *ends])
    span = max((end - origin).total_seconds(), 0.001)
    rows = []
    for step in steps:
        match = _NAME.match(step.name or "")
        platform = (match.group("platform") if match else None) or default_platform
        position = match.group("position") if match else ""
        instruction = match.group("rest") if match else (step.name or step.digest)
        keyword = instruction.split(" ", 1)[0]
        state = _state(step, finished)
        started = as_utc(step.started_at) if step.started_at else origin
        stopped = as_utc(step.completed_at) if step.completed_at else (end if state == "running" else started)
        offset = (started - origin).total_seconds() / span * 100
        width = max((stopped - started).total_seconds() / span * 100, 0.4)
        rows.append(
            StepRow(
                id=step.id,
                digest=step.digest,
                name=step.name or step.digest,
                platform=platform,
                position=position,
                instruction=instruction,
                keyword=keyword if keyword in _KEYWORDS else "",
                state=state,
                duration=human_duration(seconds_between(step.started_at, step.completed_at))
                if state in ("done", "error", "running")
                else ("cached" if state == "cached" else "-"),
                error=step.error or "",
                has_logs=step.has_logs,
                offset=round(min(offset, 99.6), 2),
                width=round(min(width, 100 - min(offset, 99.6)), 2),
            )
        )
    return rows


def platforms_of(build: Build) -> list[str]:
    found: list[str] = []
    for option in build.options or []:
        for platform in option.get("platforms") or option.get("platform") or []:
            if isinstance(platform, str) and platform not in found:
                found.append(platform)
    return found


def build_duration(build: Build) -> float | None:
    return seconds_between(build.started_at or build.created_at, build.finished_at)


def started_by(recorded: str | None) -> str:
    """ "organization token 1234567890", "CI github:repo:acme/web:ref:..." from "<kind>:<id>"."""
    if not recorded:
        return "-"
    kind, _, who = recorded.partition(":")
    return f"CI {who}" if kind == "oidc" else f"{kind} token {who}"


@dataclass(frozen=True, slots=True)
class BuildRow:
    id: str
    status: str
    created: str
    duration: str
    duration_seconds: float
    cached: int
    total: int
    saved: str
    platforms: str
    started_by: str


def build_rows(summaries: Sequence[Summary]) -> list[BuildRow]:
    rows = []
    for s in summaries:
        seconds = build_duration(s.build)
        rows.append(
            BuildRow(
                id=s.build.id,
                status=s.build.status,
                created=when(s.build.created_at),
                duration=human_duration(seconds),
                duration_seconds=round(seconds or 0.0, 2),
                cached=s.cached_steps,
                total=s.total_steps,
                saved=human_duration(s.saved_seconds) if s.saved_seconds else "-",
                platforms=", ".join(platforms_of(s.build)) or "-",
                started_by=started_by(s.build.started_by),
            )
        )
    return rows
