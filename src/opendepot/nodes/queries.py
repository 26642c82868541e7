from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import SingularLease


def try_hold(session: Session, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Takes or renews the lease: true if holder has it until now + ttl. The row is locked (PostgreSQL) so
    that two nodes never both see it expired and both take it."""
    row = session.execute(
        select(SingularLease).where(SingularLease.name == name).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        try:
            with session.begin_nested():
                session.execute(insert(SingularLease).values(name=name, holder=holder, expires_at=now + ttl))
        except IntegrityError:
            return False  # another node inserted it first
        return True
    if row.holder != holder and row.expires_at > now:
        return False
    row.holder, row.expires_at = holder, now + ttl
    return True


def release(session: Session, name: str, holder: str, now: datetime) -> None:
    """On a clean stop: another node may take over at once."""
    session.execute(
        update(SingularLease)
        .where(SingularLease.name == name, SingularLease.holder == holder)
        .values(expires_at=now)
    )


def holder_of(session: Session, name: str, now: datetime) -> str | None:
    row = session.get(SingularLease, name)
    return row.holder if row is not None and row.expires_at > now else None
