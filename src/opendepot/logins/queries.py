from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from .models import LoginRequest


def get(session: Session, login_id: str) -> LoginRequest | None:
    return session.get(LoginRequest, login_id)


def forget_expired(session: Session, now: datetime, approved_before: datetime) -> None:
    """Expired requests nobody approved, and approved ones that expired before approved_before."""
    session.execute(
        delete(LoginRequest).where(
            or_(
                and_(LoginRequest.expires_at < now, LoginRequest.approved_at.is_(None)),
                LoginRequest.expires_at < approved_before,
            )
        )
    )


def by_approval_id(session: Session, approval_id: str) -> LoginRequest | None:
    return session.scalars(select(LoginRequest).where(LoginRequest.approval_id == approval_id)).first()


def waiting(session: Session, now: datetime, client_address: str | None = None) -> int:
    """Requests neither expired nor completed; from client_address only, when one is given."""
    query = (
        select(func.count())
        .select_from(LoginRequest)
        .where(LoginRequest.expires_at > now, LoginRequest.completed_at.is_(None))
    )
    if client_address is not None:
        query = query.where(LoginRequest.client_address == client_address)
    return int(session.scalar(query) or 0)
