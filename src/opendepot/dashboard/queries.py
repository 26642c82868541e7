from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row, delete, select
from sqlalchemy.orm import Session

from opendepot.tokens.models import Token

from .models import DashboardSession


def add(session: Session, row: DashboardSession) -> None:
    session.add(row)


def token_expiry(session: Session, token_id: str) -> datetime | None:
    """When the token stops authenticating; None when it lasts until deleted (or is gone)."""
    return session.scalar(select(Token.expires_at).where(Token.id == token_id))


def with_token(session: Session, secret_hash: str) -> Row[DashboardSession, Token] | None:
    """The session and the token it acts with (absent when either is gone)."""
    stmt = (
        select(DashboardSession, Token)
        .join(Token, Token.id == DashboardSession.token_id)
        .where(DashboardSession.secret_hash == secret_hash)
    )
    return session.execute(stmt).first()


def remove(session: Session, secret_hash: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.secret_hash == secret_hash))


def remove_expired(session: Session, now: datetime) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
