from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from opendepot.store.dialect import insert_ignore

from .models import SealedSecret


def get(session: Session, name: str) -> SealedSecret | None:
    return session.execute(select(SealedSecret).where(SealedSecret.name == name)).scalar_one_or_none()


def insert_first(session: Session, name: str, public: str, sealed: bytes, now: datetime) -> None:
    """The first writer wins: a row another node inserted meanwhile is kept as it is."""
    insert_ignore(
        session,
        SealedSecret,
        {"name": name, "public": public, "sealed": sealed, "created_at": now},
        conflict_on=["name"],
    )


def remove(session: Session, name: str) -> None:
    session.execute(delete(SealedSecret).where(SealedSecret.name == name))
