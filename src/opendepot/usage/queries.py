from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import Row, func, or_, select
from sqlalchemy.orm import Session

from opendepot.builds.models import Build, Lease, Step

from .models import CacheSample

# A period may hold hundreds of thousands of builds (a project token makes them at will): its rows are
# streamed as plain tuples in batches, never loaded whole. Loading 200,000 builds as objects took 5.8 s and
# 656 MiB of a worker for one GetUsage.
STREAM_BATCH = 5000


def build_times_in(
    session: Session, project_id: str, start: datetime, end: datetime
) -> Iterator[Row[datetime, datetime | None, datetime | None, float]]:
    """(created_at, started_at, finished_at, seconds its cache hits saved) of each build created in
    [start, end), streamed."""
    saved = (
        select(func.coalesce(func.sum(Step.saved_seconds), 0.0))
        .where(Step.build_id == Build.id)
        .scalar_subquery()
    )
    stmt = select(Build.created_at, Build.started_at, Build.finished_at, saved).where(
        Build.project_id == project_id, Build.created_at >= start, Build.created_at < end
    )
    return iter(session.execute(stmt.execution_options(yield_per=STREAM_BATCH)))


def build_count_in(session: Session, project_id: str, start: datetime, end: datetime) -> int:
    stmt = select(func.count()).where(
        Build.project_id == project_id, Build.created_at >= start, Build.created_at < end
    )
    return int(session.scalar(stmt) or 0)


def started_builds_in(
    session: Session, project_id: str, start: datetime, end: datetime
) -> Iterator[Row[datetime, datetime | None]]:
    """(started_at, finished_at) of each started build created in [start, end), streamed."""
    stmt = select(Build.started_at, Build.finished_at).where(
        Build.project_id == project_id,
        Build.created_at >= start,
        Build.created_at < end,
        Build.started_at.is_not(None),
    )
    return iter(session.execute(stmt.execution_options(yield_per=STREAM_BATCH)))


def lease_times_in(
    session: Session, project_id: str, start: datetime, end: datetime
) -> Iterator[Row[datetime, datetime | None, datetime | None, str]]:
    """(acquired_at, served_at, released_at, hardware) of each lease taken in [start, end), streamed."""
    stmt = select(Lease.acquired_at, Lease.served_at, Lease.released_at, Lease.hardware).where(
        Lease.project_id == project_id, Lease.acquired_at >= start, Lease.acquired_at < end
    )
    return iter(session.execute(stmt.execution_options(yield_per=STREAM_BATCH)))


def cache_bytes_at(session: Session, project_id: str, at: datetime) -> int:
    """The last sample before `at` of each platform, summed."""
    latest = (
        select(CacheSample.platform, func.max(CacheSample.sampled_at).label("at"))
        .where(CacheSample.project_id == project_id, CacheSample.sampled_at < at)
        .group_by(CacheSample.platform)
        .subquery()
    )
    stmt = (
        select(func.coalesce(func.sum(CacheSample.bytes), 0))
        .join(latest, (CacheSample.platform == latest.c.platform) & (CacheSample.sampled_at == latest.c.at))
        .where(CacheSample.project_id == project_id)
    )
    return int(session.scalar(stmt) or 0)


def samples_for_average(
    session: Session, project_id: str, start: datetime, end: datetime
) -> Sequence[Row[str, datetime, int]]:
    """The samples inside the period and, per platform, the last one before it (which holds at its start)."""
    before = (
        select(CacheSample.platform, func.max(CacheSample.sampled_at).label("at"))
        .where(CacheSample.project_id == project_id, CacheSample.sampled_at < start)
        .group_by(CacheSample.platform)
        .subquery()
    )
    stmt = (
        select(CacheSample.platform, CacheSample.sampled_at, CacheSample.bytes)
        .outerjoin(
            before, (CacheSample.platform == before.c.platform) & (CacheSample.sampled_at == before.c.at)
        )
        .where(
            CacheSample.project_id == project_id,
            or_(CacheSample.sampled_at.between(start, end), before.c.at.is_not(None)),
            CacheSample.sampled_at < end,
        )
        .order_by(CacheSample.platform, CacheSample.sampled_at)
    )
    return session.execute(stmt).all()


def add_sample(session: Session, project_id: str, platform: str, at: datetime, size: int) -> None:
    session.add(CacheSample(project_id=project_id, platform=platform, sampled_at=at, bytes=size))


def saved_seconds_in(session: Session, project_id: str, start: datetime, end: datetime) -> float:
    """What the cache hits of the period's builds saved (metered on their steps)."""
    stmt = (
        select(func.coalesce(func.sum(Step.saved_seconds), 0.0))
        .join(Build, Build.id == Step.build_id)
        .where(Build.project_id == project_id, Build.created_at >= start, Build.created_at < end)
    )
    return float(session.scalar(stmt) or 0.0)
