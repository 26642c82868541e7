"""`reaping_due` (a read, several times a second) says yes exactly when `reap` (a write) has something to do:
a lease whose heartbeats stopped, a running build nobody holds, a build past the build timeout."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from opendepot.auth import Principal
from opendepot.builds import service as builds
from opendepot.builds.models import Build, Lease
from opendepot.clock import utcnow
from opendepot.store import Store
from opendepot.tokens.models import Token
from opendepot.tokens.service import BUILD_TOKEN_GRACE
from tests.support.domain import lease_of, organization_with_project

LEASE_TIMEOUT = timedelta(seconds=30)
BUILD_TIMEOUT = timedelta(hours=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def due(store: Store, now: datetime, build_timeout: timedelta | None = None) -> bool:
    return store.lookup(lambda c: builds.reaping_due(c, LEASE_TIMEOUT, now, build_timeout))


def reap(store: Store, now: datetime, build_timeout: timedelta | None = None) -> tuple[int, int]:
    with store.transaction() as session:
        return builds.reap(session, LEASE_TIMEOUT, now, build_timeout)


def new_build(store: Store, acquired: bool) -> tuple[Principal, str]:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        build, _ = builds.create_build(session, admin, project.id, [])
        if acquired:
            builds.acquire(session, admin, build.id, "amd64")
        return admin, build.id


def test_nothing_is_due_while_leases_beat_and_builds_are_young(either_store: Store) -> None:
    store = either_store
    new_build(store, acquired=True)
    now = utcnow()
    assert not due(store, now)
    assert not due(store, now, BUILD_TIMEOUT)
    assert reap(store, now, BUILD_TIMEOUT) == (0, 0)


def test_a_lease_whose_heartbeats_stopped_is_due_until_reaped(either_store: Store) -> None:
    store = either_store
    new_build(store, acquired=True)
    later = utcnow() + LEASE_TIMEOUT + timedelta(seconds=1)
    assert due(store, later)
    assert reap(store, later) == (1, 1)  # the lease released, and its build, held by nobody, ended
    assert not due(store, later)


def test_a_build_that_never_took_a_lease_is_due_once_the_lease_timeout_passed(either_store: Store) -> None:
    store = either_store
    new_build(store, acquired=False)
    assert not due(store, utcnow())
    later = utcnow() + LEASE_TIMEOUT + timedelta(seconds=1)
    assert due(store, later)
    assert reap(store, later) == (0, 1)
    assert not due(store, later)


def test_a_build_past_the_build_timeout_is_due_only_with_one(either_store: Store) -> None:
    store = either_store
    admin, build_id = new_build(store, acquired=True)
    later = utcnow() + BUILD_TIMEOUT + timedelta(seconds=1)
    with store.transaction() as session:  # its lease still beats, an hour on
        session.execute(update(Lease).values(heartbeat_at=later))
    assert not due(store, later)
    assert due(store, later, BUILD_TIMEOUT)
    assert reap(store, later, BUILD_TIMEOUT) == (0, 0)  # ended as timed out, not as abandoned
    with store.transaction() as session:
        assert builds.load_build(session, admin, build_id).status == "error"
    assert not due(store, later, BUILD_TIMEOUT)


def test_many_abandoned_builds_are_ended_a_batch_per_reap_oldest_first(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project token can leave any number of builds unconnected: one reap ended all of them in one
    transaction, holding the store's write lock (20,000: 4.3 s). Now REAP_BATCH per reap, and reaping stays
    due until none is left."""
    store = either_store
    monkeypatch.setattr(builds, "REAP_BATCH", 3)
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        made = []
        for i in range(7):
            build, _ = builds.create_build(session, admin, project.id, [])
            build.created_at = T0 + timedelta(seconds=i)  # their order, whatever the clock's resolution
            made.append(build.id)
    later = utcnow() + LEASE_TIMEOUT + timedelta(seconds=1)

    def ended() -> set[str]:
        with store.transaction() as session:
            return {
                b for b in made if (found := session.get(Build, b)) is not None and found.status != "running"
            }

    assert reap(store, later) == (0, 3)
    assert ended() == set(made[:3])  # the oldest first
    counts = []
    while due(store, later):
        counts.append(reap(store, later)[1])
    assert counts == [3, 1] and ended() == set(made)


def test_a_build_its_cli_finishes_while_the_reaper_ends_it_keeps_its_outcome(either_store: Store) -> None:
    """The reaper chooses its builds with a plain read, then ends them: one that its CLI finished meanwhile
    (the reaper's write waits for FinishBuild's row lock on PostgreSQL) is not ended again."""
    store = either_store
    admin, build_id = new_build(store, acquired=True)
    later = utcnow() + LEASE_TIMEOUT + timedelta(seconds=1)
    results: list[tuple[int, int]] = []
    reaper = threading.Thread(target=lambda: results.append(reap(store, later)))
    with store.transaction() as session:
        builds.finish_build(session, admin, build_id, builds.Outcome.success())
        reaper.start()
        reaper.join(0.5)
        assert reaper.is_alive(), "the reaper did not wait for the finish's transaction"
    reaper.join(30)
    assert results == [(0, 0)]
    with store.transaction() as session:
        build = builds.load_build(session, admin, build_id)
        assert (build.status, build.error) == ("success", None)


def test_the_take_over_ends_the_builds_that_held_the_previous_nodes_builders(either_store: Store) -> None:
    store = either_store
    node_started = utcnow()
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        held, unconnected, arrived = (
            builds.create_build(session, admin, project.id, [])[0].id for _ in "abc"
        )
        builds.acquire(session, admin, held, "amd64")
        session.execute(update(Lease).values(acquired_at=T0))  # before this node started
        builds.acquire(session, admin, arrived, "amd64")  # from this node: it goes on
        session.execute(update(Lease).where(Lease.build_id == arrived).values(acquired_at=node_started))
    with store.transaction() as session:
        assert builds.interrupt_building(session, node_started, now=node_started) == 1
    with store.transaction() as session:
        assert session.get(Build, unconnected).status == "running"  # type: ignore[union-attr]
        assert session.get(Build, arrived).status == "running"  # type: ignore[union-attr]
        ended = builds.load_build(session, admin, held)
        assert (ended.status, ended.error, ended.finished_at) == ("error", builds.INTERRUPTED, node_started)
        assert lease_of(session, held, "amd64").released_at == node_started  # type: ignore[union-attr]
        assert lease_of(session, arrived, "amd64").released_at is None  # type: ignore[union-attr]
        token = session.scalars(select(Token).where(Token.build_id == held)).one()
        assert token.expires_at == node_started + BUILD_TOKEN_GRACE
    with store.transaction() as session:  # done once: nothing is left to end
        assert builds.interrupt_building(session, node_started) == 0


def test_the_take_over_ends_any_number_of_builds_in_slices(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every build that held a builder ends at take-over, however many (each slice's statements bind its
    ids, and PostgreSQL takes at most 65,535 parameters)."""
    store = either_store
    monkeypatch.setattr(builds, "REAP_BATCH", 2)
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        held = [builds.create_build(session, admin, project.id, [])[0].id for _ in range(5)]
        for build_id in held:
            builds.acquire(session, admin, build_id, "amd64")
    node_started = utcnow() + timedelta(seconds=1)
    with store.transaction() as session:
        assert builds.interrupt_building(session, node_started) == 5
    with store.transaction() as session:
        ended = [builds.load_build(session, admin, build_id) for build_id in held]
        assert {(build.status, build.error) for build in ended} == {("error", builds.INTERRUPTED)}
        assert all(lease_of(session, b, "amd64").released_at is not None for b in held)  # type: ignore[union-attr]
