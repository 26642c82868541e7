from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, func, or_, select
from sqlalchemy.orm import Session, defer

from opendepot.builds.models import Build, Lease, Step

from .models import CacheSample


def builds_in(session: Session, project_id: str, start: datetime, end: datetime) -> Sequence[Build]:
    stmt = select(Build).where(
        Build.project_id == project_id, Build.created_at >= start, Build.created_at < end
    )
    # Not their options (up to 256 KiB each): a period can hold thousands of builds.
    return session.scalars(stmt.options(defer(Build.options, raiseload=True))).all()


def leases_in(session: Session, project_id: str, start: datetime, end: datetime) -> Sequence[Lease]:
    stmt = select(Lease).where(
        Lease.project_id == project_id, Lease.acquired_at >= start, Lease.acquired_at < end
    )
    return session.scalars(stmt).all()


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


def saved_seconds_by_build(
    session: Session, project_id: str, start: datetime, end: datetime
) -> dict[str, float]:
    """build -> what its cache hits saved, for the builds created in [start, end)."""
    stmt = (
        select(Step.build_id, func.coalesce(func.sum(Step.saved_seconds), 0.0))
        .join(Build, Build.id == Step.build_id)
        .where(Build.project_id == project_id, Build.created_at >= start, Build.created_at < end)
        .group_by(Step.build_id)
    )
    return {build_id: float(saved or 0.0) for build_id, saved in session.execute(stmt)}
