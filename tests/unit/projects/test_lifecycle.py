"""Project delete and cache reset as use cases: builders stopped before the row goes, asked through the
projects domain's own interfaces (fakes here), against a real SQLite store."""

from __future__ import annotations

import asyncio

import pytest

from opendepot.auth import Principal, TokenKind
from opendepot.errors import FailedPrecondition, PermissionDenied
from opendepot.projects import queries
from opendepot.projects.lifecycle import ProjectLifecycle
from opendepot.store import Store
from tests.support.domain import organization_with_project


class FakeBuilders:
    def __init__(self, store: Store, *, fail: bool = False) -> None:
        self.store = store
        self.fail = fail
        self.wiped: list[tuple[str, bool]] = []
        self.forgotten: list[tuple[str, bool]] = []

    async def stop_and_wipe(self, project_id: str) -> None:
        if self.fail:
            raise FailedPrecondition("the builders did not stop in time")
        with self.store.transaction() as session:
            row_still_there = queries.get(session, project_id) is not None
        self.wiped.append((project_id, row_still_there))

    async def forget(self, project_id: str) -> None:
        with self.store.transaction() as session:
            row_still_there = queries.get(session, project_id) is not None
        self.forgotten.append((project_id, row_still_there))


class FakeAuthority:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, project_id: str) -> None:
        self.forgotten.append(project_id)


def make_project(store: Store) -> tuple[Principal, str]:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        return admin, project.id


def exists(store: Store, project_id: str) -> bool:
    with store.transaction() as session:
        return queries.get(session, project_id) is not None


def test_delete_stops_the_builders_before_the_row_goes_then_forgets_the_ca(store: Store) -> None:
    admin, project_id = make_project(store)
    builders, authority = FakeBuilders(store), FakeAuthority()
    asyncio.run(ProjectLifecycle(store, builders, authority).delete(admin, project_id))
    assert builders.wiped == [(project_id, True)]
    assert builders.forgotten == [(project_id, False)]  # the builders' records go after the project's row
    assert not exists(store, project_id)
    assert authority.forgotten == [project_id]


def test_builders_that_do_not_stop_leave_the_project_whole(store: Store) -> None:
    admin, project_id = make_project(store)
    authority = FakeAuthority()
    builders = FakeBuilders(store, fail=True)
    lifecycle = ProjectLifecycle(store, builders, authority)
    with pytest.raises(FailedPrecondition):
        asyncio.run(lifecycle.delete(admin, project_id))
    assert exists(store, project_id)
    assert authority.forgotten == [] and builders.forgotten == []


def test_a_project_token_may_reset_its_cache_but_not_delete_the_project(store: Store) -> None:
    admin, project_id = make_project(store)
    own = Principal(
        kind=TokenKind.PROJECT, token_id="p", organization_id=admin.organization_id, project_id=project_id
    )
    builders = FakeBuilders(store)
    lifecycle = ProjectLifecycle(store, builders, FakeAuthority())
    target = asyncio.run(lifecycle.reset_cache(own, project_id))
    assert (target.project.id, target.organization_name) == (project_id, "acme")
    assert builders.wiped == [(project_id, True)]
    with pytest.raises(PermissionDenied):
        asyncio.run(lifecycle.delete(own, project_id))
    assert exists(store, project_id)
    assert builders.wiped == [(project_id, True)]
    assert builders.forgotten == []  # a cache reset keeps the builders' records
