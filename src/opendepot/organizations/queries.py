from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Organization


def get(session: Session, organization_id: str) -> Organization | None:
    return session.get(Organization, organization_id)


def get_by_name(session: Session, name: str) -> Organization | None:
    return session.scalars(select(Organization).where(Organization.name == name)).first()


def list_by_ids(session: Session, ids: Sequence[str]) -> Sequence[Organization]:
    stmt = select(Organization).where(Organization.id.in_(ids)).order_by(Organization.created_at)
    return session.scalars(stmt).all()


def count(session: Session) -> int:
    return len(session.scalars(select(Organization.id).limit(1)).all())


def list_all(session: Session) -> Sequence[Organization]:
    return session.scalars(select(Organization).order_by(Organization.created_at)).all()
