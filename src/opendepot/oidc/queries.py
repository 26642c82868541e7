from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from opendepot.store.dialect import insert_ignore

from .models import TokenUse


def get_use(session: Session, key: str, *, fresh: bool = False) -> TokenUse | None:
    return session.get(TokenUse, key, populate_existing=fresh)


def forget_uses_expired_before(session: Session, before: datetime) -> None:
    session.execute(delete(TokenUse).where(TokenUse.expires_at < before))


def record_first_use(session: Session, key: str, first_used_at: datetime, expires_at: datetime) -> None:
    """Another worker may record the same first use at the same moment: the insert then does nothing."""
    insert_ignore(
        session, TokenUse, {"key": key, "first_used_at": first_used_at, "expires_at": expires_at}, ["key"]
    )
