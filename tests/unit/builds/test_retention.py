"""The retention sweep (--build-retention-days): builds that finished longer ago than the retention are
deleted with all they kept, the oldest first, in slices of bounded size; running and younger builds stay
whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opendepot.auth import Principal
from opendepot.builds import queries
from opendepot.builds import service as builds
from opendepot.builds.models import Build, Lease, LogLine, LogVolume, StatusReport, Step
from opendepot.store import Store
from opendepot.tokens.models import Token
from tests.support.domain import organization_with_project

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RETENTION = timedelta(days=7)
OWNED = (LogLine, StatusReport, Step, Lease, Token, LogVolume)


def build_with_history(session: Session, project_id: str, admin: Principal, finished: datetime | None) -> str:
    """A build with 5 log lines, 3 steps, 2 status reports, a lease, its build token and its log volume;
    finished at `finished`, or still running (created 20 days ago)."""
    build, _secret = builds.create_build(session, admin, project_id, [])
    builds.acquire(session, admin, build.id, "amd64")
    stored = session.get(Build, build.id)
    assert stored is not None
    stored.created_at = (finished or NOW - timedelta(days=20)) - timedelta(minutes=5)
    if finished is not None:
        stored.status, stored.finished_at = "success", finished
    for i in range(3):
        digest = f"sha256:{i}"
        session.add(Step(build_id=build.id, project_id=project_id, digest=digest, name="", started_at=NOW))
    queries.insert_log_lines(
        session,
        [
            {"build_id": build.id, "digest": "sha256:0", "stream": 1, "logged_at": NOW, "text": f"line {i}"}
            for i in range(5)
        ],
    )
    queries.add_log_volume(session, build.id)
    session.add_all(StatusReport(build_id=build.id, received_at=NOW, payload=b"x") for _ in range(2))
    session.flush()
    return build.id


def owned_rows(store: Store, build_id: str) -> dict[str, int]:
    with store.transaction() as session:
        counts = {
            model.__tablename__: session.scalar(
                select(func.count()).select_from(model).where(model.build_id == build_id)
            )
            for model in OWNED
        }
        counts["builds"] = session.scalar(select(func.count()).select_from(Build).where(Build.id == build_id))
        return {table: int(count or 0) for table, count in counts.items()}


WHOLE = {
    "build_log_lines": 5,
    "status_reports": 2,
    "build_steps": 3,
    "leases": 1,
    "tokens": 1,
    "build_log_volume": 1,
    "builds": 1,
}
GONE = dict.fromkeys(WHOLE, 0)


def test_expired_builds_go_whole_in_bounded_slices_oldest_first(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = either_store
    monkeypatch.setattr(builds, "PRUNE_ROWS", 4)
    monkeypatch.setattr(builds, "PRUNE_BUILDS", 1)
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        oldest = build_with_history(session, project.id, admin, NOW - timedelta(days=10))
        older = build_with_history(session, project.id, admin, NOW - timedelta(days=9))
        young = build_with_history(session, project.id, admin, NOW - timedelta(days=1))
        running = build_with_history(session, project.id, admin, None)
    for build_id in (oldest, older, young, running):
        assert owned_rows(store, build_id) == WHOLE

    def prune() -> tuple[int, int]:
        with store.transaction() as session:
            return builds.prune_slice(session, RETENTION, NOW)

    # 10 bulk rows each (5 lines, 2 reports, 3 steps): three slices of at most 4 rows, the last one (2 rows)
    # deleting the build itself with what is left of it.
    assert prune() == (0, 4)
    assert owned_rows(store, older) == WHOLE  # the oldest first: the next one is untouched
    assert prune() == (0, 4)
    assert prune() == (1, 2)
    assert owned_rows(store, oldest) == GONE
    slices = []
    while (done := prune()) != (0, 0):
        slices.append(done)
    assert slices == [(0, 4), (0, 4), (1, 2)]
    assert owned_rows(store, older) == GONE
    assert owned_rows(store, young) == WHOLE
    assert owned_rows(store, running) == WHOLE  # created 20 days ago, but not finished


def test_nothing_to_prune_within_the_retention(either_store: Store) -> None:
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        kept = build_with_history(session, project.id, admin, NOW - RETENTION + timedelta(minutes=1))
    with store.transaction() as session:
        assert builds.prune_slice(session, RETENTION, NOW) == (0, 0)
    assert owned_rows(store, kept) == WHOLE
