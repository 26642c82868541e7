"""Usage figures from what opendepot recorded: builds, machine leases, steps and cache-size samples.

Definitions (the API leaves them open):
- A period is half-open, [start, end). A build counts in the period it was created in, even if it ends
  after the period.
- build_duration_seconds: the sum of finished - started over those builds (running builds count so far).
- minutes_billed: over the leases taken in the period, each lease's machine time (from when its build got
  its running builder, to released or to now: waiting past a builder cap or for a builder to start is free)
  rounded up to whole minutes, times the hardware's CPUs / 16: a minute on the default 16x32 builder is 1,
  on 4x4 it is 0.25, on 32x64 it is 2.
- minutes_saved: the earlier execution time of the steps that were cached, over the period's builds.
- layer_cache_size_gb: the project's cache at the end of the period (the last sample before it, per
  platform, summed), in whole GiB, rounded.
- storage `cache`: the time-weighted average cache size over the period in GiB; `registry`: what the
  projects' images take in the registry when asked (config plus layers, each image once), in GiB.
  GitHub Actions jobs and agent sandboxes: opendepot runs neither; always empty."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.orm import Session

from opendepot.auth import Principal
from opendepot.clock import as_utc, utcnow
from opendepot.errors import InvalidArgument
from opendepot.pagination import Cursor, PageRequest, next_token
from opendepot.projects import queries as project_queries
from opendepot.projects.hardware import Hardware
from opendepot.projects.models import Project
from opendepot.projects.service import load_project
from opendepot.registry import queries as registry_queries

from . import queries

GIB = 1 << 30
PROJECT_USAGE_LIST = "project-usage"


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime


def period(start: datetime | None, end: datetime | None) -> Period:
    if start is None:
        raise InvalidArgument("start_at", "is required")
    if end is None:
        raise InvalidArgument("end_at", "is required")
    if end <= start:
        raise InvalidArgument("end_at", "must be after start_at")
    return Period(start, end)


@dataclass(frozen=True, slots=True)
class ProjectFigures:
    project_id: str
    project_name: str
    build_count: int
    build_duration_seconds: int
    layer_cache_bytes: int
    minutes_saved: float
    minutes_billed: float

    @property
    def layer_cache_size_gb(self) -> int:
        return round(self.layer_cache_bytes / GIB)


def _figures(session: Session, project: Project, p: Period, now: datetime) -> ProjectFigures:
    duration = sum(
        max(0.0, ((finished or now) - started).total_seconds())
        for started, finished in queries.started_builds_in(session, project.id, p.start, p.end)
    )
    saved = queries.saved_seconds_in(session, project.id, p.start, p.end)
    billed = 0.0
    for _acquired, served, released, hardware in queries.lease_times_in(session, project.id, p.start, p.end):
        billed += _billed_minutes(served, released, hardware, now)
    return ProjectFigures(
        project_id=project.id,
        project_name=project.name,
        build_count=queries.build_count_in(session, project.id, p.start, p.end),
        build_duration_seconds=int(duration),
        layer_cache_bytes=queries.cache_bytes_at(session, project.id, p.end),
        minutes_saved=saved / 60,
        minutes_billed=billed,
    )


def _billed_minutes(
    served: datetime | None, released: datetime | None, hardware: str, now: datetime
) -> float:
    """A lease never served (its build gave up waiting for a builder) used no machine time."""
    if served is None:
        return 0.0
    seconds = max(0.0, ((released or now) - served).total_seconds())
    return math.ceil(seconds / 60) * Hardware.parse(hardware).billing_weight


def project_usage(session: Session, principal: Principal, project_id: str, p: Period) -> ProjectFigures:
    return _figures(session, load_project(session, principal, project_id), p, utcnow())


def list_project_usage(
    session: Session, principal: Principal, p: Period, page: PageRequest
) -> tuple[list[ProjectFigures], str | None]:
    principal.require_listing("usage")
    rows = project_queries.page(
        session,
        principal.organization_id,
        limit=page.size + 1,
        after=page.after,
        only_project_id=principal.project_id,
    )
    token = next_token(PROJECT_USAGE_LIST, [Cursor(r.created_at, r.id) for r in rows], page.size)
    now = utcnow()
    return [_figures(session, r, p, now) for r in rows[: page.size]], token


@dataclass(frozen=True, slots=True)
class OrganizationUsage:
    projects: list[ProjectFigures]
    cache_gb_average: float
    registry_gb: float


def organization_usage(session: Session, principal: Principal, p: Period) -> OrganizationUsage:
    principal.require_listing("usage")
    projects: Sequence[Project] = project_queries.page(
        session, principal.organization_id, limit=1_000_000, after=None, only_project_id=principal.project_id
    )
    now = utcnow()
    figures = [_figures(session, r, p, now) for r in projects]
    average = sum(_average_bytes(session, r.id, p) for r in projects) / GIB
    registry = sum(registry_queries.stored_bytes(session, r.id) for r in projects) / GIB
    return OrganizationUsage(projects=figures, cache_gb_average=average, registry_gb=registry)


def _average_bytes(session: Session, project_id: str, p: Period) -> float:
    """Time-weighted average over the period: each sample holds until the next one of its platform."""
    by_platform: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for platform, at, size in queries.samples_for_average(session, project_id, p.start, p.end):
        by_platform[platform].append((at, size))
    total = 0.0
    span = (p.end - p.start).total_seconds()
    for samples in by_platform.values():
        for (at, size), following in zip(samples, [*samples[1:], (p.end, 0)], strict=True):
            begin, finish = max(at, p.start), min(following[0], p.end)
            if finish > begin:
                total += size * (finish - begin).total_seconds()
    return total / span


def cache_sizes(session: Session, principal: Principal, project_ids: Sequence[str]) -> dict[str, int]:
    """project -> bytes its cache takes now (the last samples), for the projects this principal reaches."""
    now = utcnow()
    sizes: dict[str, int] = {}
    for project_id in project_ids:
        project = load_project(session, principal, project_id)
        sizes[project.id] = queries.cache_bytes_at(session, project.id, now)
    return sizes


MAX_DAILY_DAYS = 366


@dataclass(frozen=True, slots=True)
class Day:
    """One UTC day of a period, with the same definitions as the period's figures."""

    day: date
    builds: int
    build_minutes: float
    minutes_billed: float
    minutes_saved: float


def daily_usage(session: Session, principal: Principal, p: Period) -> list[Day]:
    """The period day by day (UTC) for the organization's projects: builds by the day they were created,
    machine time by the day its lease was taken."""
    if p.end - p.start > timedelta(days=MAX_DAILY_DAYS):
        raise InvalidArgument("end_at", f"a daily breakdown covers at most {MAX_DAILY_DAYS} days")
    projects: Sequence[Project] = project_queries.page(
        session, principal.organization_id, limit=1_000_000, after=None, only_project_id=principal.project_id
    )
    now = utcnow()
    # day -> [builds, build seconds, billed minutes, saved seconds]
    totals: dict[date, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for project in projects:
        for created, started, finished, saved in queries.build_times_in(session, project.id, p.start, p.end):
            bucket = totals[as_utc(created).date()]
            bucket[0] += 1
            if started:
                bucket[1] += max(0.0, ((finished or now) - started).total_seconds())
            bucket[3] += float(saved or 0.0)
        for acquired, served, released, hardware in queries.lease_times_in(
            session, project.id, p.start, p.end
        ):
            totals[as_utc(acquired).date()][2] += _billed_minutes(served, released, hardware, now)
    days, day = [], p.start.date()
    while datetime.combine(day, datetime.min.time(), tzinfo=p.start.tzinfo) < p.end:
        b, seconds, billed, saved_seconds = totals.get(day, [0, 0.0, 0.0, 0.0])
        days.append(Day(day, int(b), seconds / 60, billed, saved_seconds / 60))
        day += timedelta(days=1)
    return days
