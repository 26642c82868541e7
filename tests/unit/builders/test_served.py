"""A lease is served (billed) from the first GetBuildKitConnection that finds its project's builder running:
not while the build waits for one (past a builder cap, or while it starts), and not again on a renewal."""

from __future__ import annotations

from datetime import timedelta

from opendepot.builders import service as builder_service
from opendepot.builders.states import BuilderState
from opendepot.builds import queries
from opendepot.store import Store
from tests.support.domain import lease_of, running_build


def test_a_lease_is_served_from_when_its_builder_runs(either_store: Store) -> None:
    store = either_store
    admin, build_id = running_build(store)
    with store.transaction() as session:
        project_id, machine = builder_service.acquire(session, admin, build_id, "amd64")
        assert machine is None  # no builder yet: the build waits
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.served_at is None
        builder_service.set_state(session, project_id, "amd64", BuilderState.STARTING, pid=99)
    with store.transaction() as session:
        _project, machine = builder_service.acquire(session, admin, build_id, "amd64")
        assert machine is not None and machine.state == BuilderState.STARTING
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.served_at is None  # still starting: not served
        builder_service.set_state(session, project_id, "amd64", BuilderState.RUNNING)
    with store.transaction() as session:
        _project, machine = builder_service.acquire(session, admin, build_id, "amd64")
        assert machine is not None and machine.state == BuilderState.RUNNING
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.served_at is not None
        served = lease.served_at
        assert served >= lease.acquired_at
        lease.served_at = served - timedelta(seconds=5)  # as if served a while ago
    with store.transaction() as session:
        builder_service.acquire(session, admin, build_id, "amd64")  # a later connection: unchanged
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.served_at == served - timedelta(seconds=5)


def test_a_lease_taken_on_a_running_builder_is_served_at_once(either_store: Store) -> None:
    store = either_store
    admin, build_id = running_build(store)
    with store.transaction() as session:
        build = queries.get(session, build_id)
        assert build is not None
        builder_service.set_state(session, build.project_id, "amd64", BuilderState.RUNNING, pid=99)
    with store.transaction() as session:
        builder_service.acquire(session, admin, build_id, "amd64")
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.served_at == lease.acquired_at
