"""Rows that unit tests start from, made through the domain services themselves."""

from __future__ import annotations

from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.organizations import service as organizations
from opendepot.projects import service as projects
from opendepot.projects.models import Project


def organization_with_project(session: Session, name: str = "web") -> tuple[Principal, Project]:
    """A new organization `acme`, its admin principal and one project with the defaults."""
    org = organizations.create_organization(session, "acme")
    admin = Principal(kind=TokenKind.ORGANIZATION, token_id="t", organization_id=org.id)
    project = projects.create_project(
        session,
        admin,
        projects.Settings(regions=("r",), default_region="r"),
        name=name,
        organization_id=None,
        region_id="",
        cache_policy=None,
        hardware=None,
    )
    return admin, project
