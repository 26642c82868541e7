from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Row, bindparam, delete, func, select, tuple_
from sqlalchemy.orm import Session

from opendepot.organizations.models import Organization
from opendepot.pagination import Cursor

from .models import Project, TrustPolicy


def get(session: Session, project_id: str) -> Project | None:
    return session.get(Project, project_id)


_p = Project.__table__
# Built once, with a bound parameter: building a select costs more than running it.
_PROJECT_BY_ID = select(_p).where(_p.c.id == bindparam("project_id"))


_OWNER = select(_p.c.id, _p.c.organization_id).where(_p.c.id == bindparam("project_id"))


# A new build's project, share-locked (PostgreSQL) until the build is written: a DeleteProject then waits
# for it (and its cascade takes the new build too), or deleted it first and the build is `not_found`. The
# build's insert failed on its foreign key before: an internal error.
_HELD_FOR_BUILD = select(_p.c.id).where(_p.c.id == bindparam("project_id")).with_for_update(read=True)


def hold_for_build(session: Session, project_id: str) -> bool:
    """Whether the project still exists, its row share-locked until commit (PostgreSQL)."""
    return session.connection().execute(_HELD_FOR_BUILD, {"project_id": project_id}).first() is not None


def owner(connection: Connection | Session, project_id: str) -> tuple[str, str] | None:
    """(project id, organization id): all CreateBuild needs of the project. A Core read of two columns costs
    ~40 µs where loading the Project through the session costs ~165."""
    row = connection.execute(_OWNER, {"project_id": project_id}).first()
    return None if row is None else (row[0], row[1])


def get_detached(connection: Connection | Session, project_id: str) -> Project | None:
    """For read-only paths: a Core select into a detached Project, without the ORM's loading machinery
    (GetProject is the hottest read)."""
    row = connection.execute(_PROJECT_BY_ID, {"project_id": project_id}).first()
    return None if row is None else Project(**row._mapping)


def page(
    session: Session,
    organization_id: str,
    *,
    limit: int,
    after: Cursor | None,
    region_id: str | None = None,
    only_project_id: str | None = None,
) -> Sequence[Project]:
    stmt = select(Project).where(Project.organization_id == organization_id)
    if region_id is not None:
        stmt = stmt.where(Project.region_id == region_id)
    if only_project_id is not None:
        stmt = stmt.where(Project.id == only_project_id)
    if after is not None:
        stmt = stmt.where(tuple_(Project.created_at, Project.id) > tuple_(after.created_at, after.id))
    stmt = stmt.order_by(Project.created_at, Project.id).limit(limit)
    return session.scalars(stmt).all()


def with_organizations(
    session: Session, organization_id: str, only_project_id: str | None
) -> Sequence[tuple[Project, Organization]]:
    stmt = (
        select(Project, Organization)
        .join(Organization, Organization.id == Project.organization_id)
        .where(Project.organization_id == organization_id)
        .order_by(Project.created_at, Project.id)
    )
    if only_project_id is not None:
        stmt = stmt.where(Project.id == only_project_id)
    return [(p, o) for p, o in session.execute(stmt)]


def all_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Project.id)))


def existing_ids(session: Session, project_ids: Sequence[str]) -> set[str]:
    """Which of these projects still exist."""
    if not project_ids:
        return set()
    return set(session.scalars(select(Project.id).where(Project.id.in_(project_ids))).all())


def delete_project(session: Session, project_id: str) -> None:
    # The project's tokens and builds go by ON DELETE CASCADE (the store turns foreign keys on in SQLite).
    session.execute(delete(TrustPolicy).where(TrustPolicy.project_id == project_id))
    session.execute(delete(Project).where(Project.id == project_id))


def trust_policies_for(session: Session, provider: str) -> Sequence[Row[str, dict[str, str]]]:
    """(project id, claims) of every trust policy of one CI provider."""
    return session.execute(
        select(TrustPolicy.project_id, TrustPolicy.claims).where(TrustPolicy.provider == provider)
    ).all()


def trust_policies(session: Session, project_id: str) -> Sequence[TrustPolicy]:
    stmt = (
        select(TrustPolicy)
        .where(TrustPolicy.project_id == project_id)
        .order_by(TrustPolicy.created_at, TrustPolicy.id)
    )
    return session.scalars(stmt).all()


def count_trust_policies(session: Session, project_id: str) -> int:
    stmt = select(func.count()).select_from(TrustPolicy).where(TrustPolicy.project_id == project_id)
    return int(session.scalar(stmt) or 0)


def get_trust_policy(session: Session, project_id: str, trust_policy_id: str) -> TrustPolicy | None:
    stmt = select(TrustPolicy).where(TrustPolicy.project_id == project_id, TrustPolicy.id == trust_policy_id)
    return session.scalars(stmt).first()


def delete_trust_policy(session: Session, trust_policy_id: str) -> None:
    session.execute(delete(TrustPolicy).where(TrustPolicy.id == trust_policy_id))
