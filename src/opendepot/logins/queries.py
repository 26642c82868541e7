from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import LoginRequest


def get(session: Session, login_id: str) -> LoginRequest | None:
    return session.get(LoginRequest, login_id)


def forget_expired_before(session: Session, before: datetime) -> None:
    session.execute(delete(LoginRequest).where(LoginRequest.expires_at < before))


def by_approval_id(session: Session, approval_id: str) -> LoginRequest | None:
    return session.scalars(select(LoginRequest).where(LoginRequest.approval_id == approval_id)).first()
