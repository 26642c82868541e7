"""--max-builds-per-minute: an organization that created N builds in the last minute is refused the next with
`resource_exhausted` and nothing written; another organization is not; a minute later it may build again."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from opendepot.auth import Principal, TokenKind
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.errors import ResourceExhausted
from opendepot.organizations import service as organizations
from opendepot.store import Store
from tests.support.domain import organization_with_project, project_of


def test_an_organization_is_bounded_per_minute_and_another_is_not(either_store: Store) -> None:
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        second = project_of(session, admin, "second")  # the bound is the organization's, over its projects
        other_org = organizations.create_organization(session, "other")
        neighbour = Principal(kind=TokenKind.ORGANIZATION, token_id="n", organization_id=other_org.id)
        theirs = project_of(session, neighbour, "theirs")
    with store.transaction() as session:
        for project_id in (project.id, second.id, project.id):
            builds.create_build(session, admin, project_id, [], per_minute=3)
    with (
        pytest.raises(
            ResourceExhausted, match=r"created 3 builds in the last minute.*--max-builds-per-minute"
        ),
        store.transaction() as session,
    ):
        builds.create_build(session, admin, second.id, [], per_minute=3)
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Build)) == 3  # nothing written
        builds.create_build(session, neighbour, theirs.id, [], per_minute=3)
        builds.create_build(session, admin, project.id, [], per_minute=0)  # no bound
        # A minute on, the organization's earlier builds no longer count.
        for build in session.scalars(select(Build)):
            build.created_at -= timedelta(seconds=61)
    with store.transaction() as session:
        builds.create_build(session, admin, second.id, [], per_minute=3)
