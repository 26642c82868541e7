"""Rows that unit tests start from, made through the domain services themselves."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.builds import service as builds
from opendepot.builds.models import Lease
from opendepot.organizations import service as organizations
from opendepot.projects import service as projects
from opendepot.projects.models import Project
from opendepot.store import Store


def organization_with_project(session: Session, name: str = "web") -> tuple[Principal, Project]:
    """A new organization `acme`, its admin principal and one project with the defaults."""
    org = organizations.create_organization(session, "acme")
    admin = Principal(kind=TokenKind.ORGANIZATION, token_id="t", organization_id=org.id)
    return admin, project_of(session, admin, name)


def project_of(session: Session, admin: Principal, name: str) -> Project:
    """Another project with the defaults in the admin's organization."""
    return projects.create_project(
        session,
        admin,
        projects.Settings(regions=("r",), default_region="r"),
        name=name,
        organization_id=None,
        region_id="",
        cache_policy=None,
        hardware=None,
    )


def running_build(store: Store) -> tuple[Principal, str]:
    """A new organization with one project and one running build: its admin principal and the build's id."""
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        build, _secret = builds.create_build(session, admin, project.id, [])
        return admin, build.id


def lease_of(session: Session, build_id: str, platform: str) -> Lease | None:
    """The build's lease on platform, released or not, as an ORM object tests can read."""
    stmt = select(Lease).where(Lease.build_id == build_id, Lease.platform == platform)
    return session.scalars(stmt).first()
