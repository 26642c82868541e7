from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .models import Organization


def get(session: Session, organization_id: str) -> Organization | None:
    return session.get(Organization, organization_id)


# NO KEY UPDATE: it orders the organization's CreateBuilds (their per-minute count, then their insert) without
# blocking the inserts that only reference the organization.
_COUNTING_BUILDS = (
    select(Organization.id)
    .where(Organization.id == bindparam("organization_id"))
    .with_for_update(key_share=True)
)


def hold_for_build_count(session: Session, organization_id: str) -> None:
    """Locks the organization's row until commit (PostgreSQL; SQLite runs one writer at a time): concurrent
    CreateBuilds counted the same builds and together passed --max-builds-per-minute."""
    session.connection().execute(_COUNTING_BUILDS, {"organization_id": organization_id})


def get_by_name(session: Session, name: str) -> Organization | None:
    return session.scalars(select(Organization).where(Organization.name == name)).first()


def list_by_ids(session: Session, ids: Sequence[str]) -> Sequence[Organization]:
    stmt = select(Organization).where(Organization.id.in_(ids)).order_by(Organization.created_at)
    return session.scalars(stmt).all()


def count(session: Session) -> int:
    return len(session.scalars(select(Organization.id).limit(1)).all())


def list_all(session: Session) -> Sequence[Organization]:
    return session.scalars(select(Organization).order_by(Organization.created_at)).all()
