"""--max-builds-per-minute: an organization that created N builds in the last minute is refused the next with
`resource_exhausted` and nothing written; another organization is not; a minute later it may build again."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.builds import queries
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.errors import ResourceExhausted
from opendepot.organizations import service as organizations
from opendepot.projects import service as projects
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


def slow_count(monkeypatch: pytest.MonkeyPatch, counted: threading.Event | None = None) -> None:
    """Each CreateBuild's per-minute count takes 0.2 s more (after it counted)."""
    count = queries.created_since

    def count_then_wait(session: Session, organization_id: str, since: datetime, limit: int) -> int:
        found = count(session, organization_id, since, limit)
        if counted is not None:
            counted.set()
        threading.Event().wait(0.2)
        return found

    monkeypatch.setattr(queries, "created_since", count_then_wait)


def test_concurrent_builds_do_not_pass_the_bound_together(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve CreateBuilds at once with a bound of 5: each counted the others' builds as not there yet, and
    6 to 12 got through (PostgreSQL). The organization's row orders them now."""
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
    slow_count(monkeypatch)

    def create(_n: int) -> bool:
        try:
            with store.transaction() as session:
                builds.create_build(session, admin, project.id, [], per_minute=5)
        except ResourceExhausted:
            return False
        return True

    with ThreadPoolExecutor(12) as pool:
        created = list(pool.map(create, range(12)))
    assert created.count(True) == 5
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Build)) == 5


def test_a_build_created_as_its_project_is_deleted_is_no_internal_error(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateBuild read the project; DeleteProject deleted it; the build's insert then failed on its foreign
    key (PostgreSQL): an internal error. Now DeleteProject waits for the build (and its cascade takes it)."""
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
    counted = threading.Event()
    slow_count(monkeypatch, counted)

    def create() -> None:
        with store.transaction() as session:
            builds.create_build(session, admin, project.id, [], per_minute=5)

    def delete() -> None:
        counted.wait(10)
        with store.transaction() as session:
            projects.delete_project(session, admin, project.id)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(create), pool.submit(delete)]:
            done.result()  # neither raised
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Build)) == 0  # the cascade took it
