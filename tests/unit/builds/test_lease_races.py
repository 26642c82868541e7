"""GetBuildKitConnection (acquire) racing itself and FinishBuild, and a status stream after the build's end.
The CLI opens several connections of one build at once; a build ends while a connection is being admitted.
On SQLite the store's write lock runs one transaction after the other; on PostgreSQL the build's row lock
orders them."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from opendepot.builds import queries
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.builds.steps import VertexUpdate
from opendepot.store import Store
from tests.support.domain import lease_of, running_build


def slow_lease_reads(monkeypatch: pytest.MonkeyPatch, read: threading.Event) -> None:
    """Each acquire's read of the build and its lease takes 0.3 s more (after it read)."""
    original = queries.build_with_lease

    def read_then_wait(session: Session, build_id: str, platform: str) -> Any:
        found = original(session, build_id, platform)
        read.set()
        threading.Event().wait(0.3)
        return found

    monkeypatch.setattr(queries, "build_with_lease", read_then_wait)


def test_connections_of_one_build_at_once_share_one_lease(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read "no lease yet"; the second's insert used to fail on the unique (build, platform): an
    internal error for one of the CLI's connections (PostgreSQL)."""
    store = either_store
    admin, build_id = running_build(store)
    slow_lease_reads(monkeypatch, threading.Event())

    def connect(_n: int) -> str:
        with store.transaction() as session:
            return builds.acquire(session, admin, build_id, "amd64")

    with ThreadPoolExecutor(3) as pool:
        projects = list(pool.map(connect, range(3)))
    assert len(set(projects)) == 1
    with store.transaction() as session:
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.released_at is None


def test_a_build_that_ends_while_a_connection_is_admitted_keeps_no_live_lease(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The acquire read the build running; FinishBuild ended it before the acquire wrote its lease. The lease
    stayed live on a finished build until the lease timeout (billed meanwhile). Now FinishBuild waits for
    the acquire's share lock on the build, then releases the lease it took."""
    store = either_store
    admin, build_id = running_build(store)
    read = threading.Event()
    slow_lease_reads(monkeypatch, read)

    def connect() -> None:
        with store.transaction() as session:
            builds.acquire(session, admin, build_id, "amd64")

    def finish() -> None:
        read.wait(10)
        with store.transaction() as session:
            builds.finish_build(session, admin, build_id, builds.Outcome.success())

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(connect), pool.submit(finish)]:
            done.result()
    with store.transaction() as session:
        lease = lease_of(session, build_id, "amd64")
        assert lease is not None and lease.released_at is not None


def test_a_status_stream_cannot_rewrite_a_build_a_minute_after_it_ended(either_store: Store) -> None:
    store = either_store
    admin, build_id = running_build(store)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    late = VertexUpdate("sha256:late", "RUN late", at, None, False, "")
    with store.transaction() as session:
        builds.finish_build(session, admin, build_id, builds.Outcome.failed("tests failed"))
    with store.transaction() as session:  # within the grace: the stream and FinishBuild race
        builds.record_status(session, admin, build_id, [], [late], [])
    with store.transaction() as session:
        ended = datetime.now(UTC) - builds.STATUS_AFTER_FINISH - timedelta(seconds=1)
        session.execute(update(Build).where(Build.id == build_id).values(finished_at=ended))
    cached = VertexUpdate("sha256:late", "RUN all good", at, at, True, "")
    other = VertexUpdate("sha256:other", "RUN added later", at, None, False, "")
    with store.transaction() as session:
        assert builds.record_status(session, admin, build_id, [b"x"], [cached, other], [])
    with store.transaction() as session:
        steps = queries.steps_page(session, build_id, limit=10, after=None)
        assert [(s.name, s.cached) for s in steps] == [("RUN late", False)]
        assert queries.status_reports(session, build_id) == []
