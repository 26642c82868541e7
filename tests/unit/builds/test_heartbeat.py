"""ReportBuildHealth: a heartbeat renews the build's live leases once they are over a second old; whether
one is due is answered from a read (the CLI's first heartbeat races its GetBuildKitConnection, which must
not wait for SQLite's write lock behind a write that changes nothing)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.builds import service as builds
from opendepot.errors import NotFound, PermissionDenied
from opendepot.store import Store
from tests.support.domain import lease_of, running_build


def age(session: Session, build_id: str) -> None:
    """The build's amd64 lease last renewed 2 s earlier than it was."""
    lease = lease_of(session, build_id, "amd64")
    assert lease is not None
    lease.heartbeat_at -= timedelta(seconds=2)


def test_a_heartbeat_is_due_only_for_a_live_lease_over_a_second_old(either_store: Store) -> None:
    store = either_store
    admin, build_id = running_build(store)
    with store.transaction() as session:
        assert not builds.heartbeat_due(session, admin, build_id, "amd64")  # no lease yet
        builds.acquire(session, admin, build_id, "amd64")
    with store.transaction() as session:
        assert not builds.heartbeat_due(session, admin, build_id, "amd64")  # just taken
        age(session, build_id)
    with store.transaction() as session:
        assert builds.heartbeat_due(session, admin, build_id, "amd64")
        assert builds.heartbeat_due(session, admin, build_id, None)  # any platform
        assert not builds.heartbeat_due(session, admin, build_id, "arm64")
        builds.heartbeat(session, admin, build_id, "amd64")
    with store.transaction() as session:
        assert not builds.heartbeat_due(session, admin, build_id, "amd64")  # renewed
        age(session, build_id)
        builds.finish_build(session, admin, build_id, builds.Outcome.success())
    with store.transaction() as session:
        assert not builds.heartbeat_due(session, admin, build_id, "amd64")  # finished: released
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.released_at is not None


def test_whether_a_heartbeat_is_due_is_not_told_to_a_stranger(store: Store) -> None:
    admin, build_id = running_build(store)
    stranger = Principal(kind=TokenKind.ORGANIZATION, token_id="s", organization_id="0000000000")
    with store.transaction() as session:
        with pytest.raises((NotFound, PermissionDenied)):
            builds.heartbeat_due(session, stranger, build_id, "amd64")
        with pytest.raises(NotFound):
            builds.heartbeat_due(session, admin, "zzzzzzzzzz", "amd64")
