from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .models import LoginRequest


def get(session: Session, login_id: str) -> LoginRequest | None:
    return session.get(LoginRequest, login_id)


def forget_expired_before(session: Session, before: datetime) -> None:
    session.execute(delete(LoginRequest).where(LoginRequest.expires_at < before))
