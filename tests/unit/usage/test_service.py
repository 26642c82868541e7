"""Usage figures from recorded builds, leases and cache samples, against the definitions in
usage/service.py (half-open periods, whole billed minutes scaled by CPUs, cache at the end of the period,
time-weighted average)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opendepot.auth import Principal
from opendepot.builds.models import Build, Lease, Step
from opendepot.errors import InvalidArgument
from opendepot.store import Store
from opendepot.usage import queries as usage_queries
from opendepot.usage import service as usage
from tests.support.domain import organization_with_project

START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=1)
GIB = 1 << 30


def setup(store: Store) -> tuple[Principal, str]:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        p = project.id

        def build(build_id: str, created: datetime, seconds: float) -> None:
            session.add(
                Build(
                    id=build_id,
                    project_id=p,
                    organization_id=admin.organization_id,
                    status="success",
                    options=[],
                    created_at=created,
                    started_at=created,
                    finished_at=created + timedelta(seconds=seconds),
                )
            )

        def lease(
            lease_id: str,
            build_id: str,
            acquired: datetime,
            seconds: float,
            hardware: str,
            waited: float | None = 0.0,
            platform: str = "amd64",
        ) -> None:
            """Served `waited` seconds after it was taken (None: never), then held `seconds`."""
            served = None if waited is None else acquired + timedelta(seconds=waited)
            session.add(
                Lease(
                    id=lease_id,
                    build_id=build_id,
                    project_id=p,
                    platform=platform,
                    hardware=hardware,
                    acquired_at=acquired,
                    heartbeat_at=acquired,
                    served_at=served,
                    released_at=(served or acquired) + timedelta(seconds=seconds),
                )
            )

        build("b000000001", START - timedelta(seconds=1), 100)  # before the period: not counted
        build("b000000002", START, 30)  # the start is inside (half-open)
        build("b000000003", END - timedelta(seconds=1), 90)  # counted whole, though it ends after
        build("b000000004", END, 10)  # the end is outside
        session.flush()
        # 2 whole minutes at 1 per minute: the 5 minutes it waited for a builder (past a cap) are not billed.
        lease("l000000001", "b000000002", START, 61, "16x32", waited=300)
        # Its arm64 lease waited 10 minutes and was never served: its build gave up, having used nothing.
        lease("l000000004", "b000000002", START, 600, "16x32", waited=None, platform="arm64")
        lease("l000000002", "b000000003", END - timedelta(seconds=1), 30, "4x4")  # 1 minute at 0.25
        lease("l000000003", "b000000004", END, 600, "16x32")  # outside
        for build_id, saved in (("b000000001", 100.0), ("b000000002", 12.0), ("b000000003", None)):
            session.add(
                Step(
                    build_id=build_id,
                    project_id=p,
                    digest="sha256:s",
                    name="RUN x",
                    cached=True,
                    saved_seconds=saved,
                )
            )
        usage_queries.add_sample(session, p, "amd64", START - timedelta(hours=1), 2 * GIB)
        usage_queries.add_sample(session, p, "amd64", START + timedelta(hours=12), 4 * GIB)
        usage_queries.add_sample(session, p, "arm64", START + timedelta(hours=18), 1 * GIB)
        usage_queries.add_sample(session, p, "amd64", END + timedelta(hours=1), 100 * GIB)
        return admin, p


def test_project_figures_follow_the_definitions(either_store: Store) -> None:
    store = either_store
    admin, project_id = setup(store)
    with store.transaction() as session:
        figures = usage.project_usage(session, admin, project_id, usage.period(START, END))
    assert figures.build_count == 2
    assert figures.build_duration_seconds == 30 + 90
    assert figures.minutes_billed == pytest.approx(2 + 0.25)
    # The last sample before the end, per platform: 4 GiB on amd64 + 1 GiB on arm64.
    assert figures.layer_cache_bytes == 5 * GIB and figures.layer_cache_size_gb == 5
    assert figures.minutes_saved == pytest.approx(12 / 60)


def test_the_daily_breakdown_has_the_same_definitions(either_store: Store) -> None:
    """Its rows are streamed (a period may hold hundreds of thousands of builds): on PostgreSQL through a
    server-side cursor."""
    store = either_store
    admin, _project_id = setup(store)
    with store.transaction() as session:
        days = usage.daily_usage(
            session, admin, usage.period(START - timedelta(days=1), END + timedelta(days=1))
        )
    assert [d.day for d in days] == [(START + timedelta(days=i)).date() for i in (-1, 0, 1)]
    before, inside, after = days
    assert before.builds == 1 and before.build_minutes == pytest.approx(100 / 60)
    assert before.minutes_saved == pytest.approx(100 / 60)
    assert inside.builds == 2 and inside.build_minutes == pytest.approx((30 + 90) / 60)
    assert inside.minutes_billed == pytest.approx(2 + 0.25) and inside.minutes_saved == pytest.approx(12 / 60)
    assert after.builds == 1 and after.minutes_billed == pytest.approx(10)


def test_the_cache_average_weights_each_sample_by_how_long_it_held(store: Store) -> None:
    admin, _project_id = setup(store)
    with store.transaction() as session:
        totals = usage.organization_usage(session, admin, usage.period(START, END))
    # amd64: 2 GiB for 12 h, then 4 GiB for 12 h = 3 GiB; arm64: 1 GiB for the last 6 h = 0.25 GiB.
    assert totals.cache_gb_average == pytest.approx(3.25)
    assert [f.build_count for f in totals.projects] == [2]


def test_a_period_must_end_after_it_starts() -> None:
    with pytest.raises(InvalidArgument, match="end_at"):
        usage.period(START, START)
    with pytest.raises(InvalidArgument, match="start_at"):
        usage.period(None, END)
