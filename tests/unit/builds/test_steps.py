"""Step merging: a vertex reported many times becomes one step; logs become lines, capped per build."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from opendepot.builds import queries, steps
from opendepot.builds import service as builds
from opendepot.builds.models import Build, LogVolume
from opendepot.builds.steps import LogChunk, VertexUpdate
from opendepot.errors import InvalidArgument
from opendepot.pagination import Cursor, PageRequest
from opendepot.store import Store
from tests.support.domain import organization_with_project, running_build

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def vertex(**changes: object) -> VertexUpdate:
    fields: dict[object, object] = {
        "digest": "sha256:x",
        "name": "",
        "started": None,
        "completed": None,
        "cached": False,
        "error": "",
    }
    fields.update(changes)
    return VertexUpdate(**fields)  # type: ignore[arg-type]


def test_updates_of_one_vertex_merge_into_one_step(store: Store) -> None:
    build_id = running_build(store)[1]
    updates = [
        vertex(name="RUN make", started=T0 + timedelta(seconds=5)),
        vertex(started=T0),  # an earlier start wins
        vertex(cached=True),  # cached if any update says so
        vertex(completed=T0 + timedelta(seconds=9), error="exit code 2"),
    ]
    with store.transaction() as session:
        for update in updates:
            steps.apply(session, build_id, [update], [])
    with store.transaction() as session:
        [step] = queries.steps_page(session, build_id, limit=10, after=None)
        assert step.name == "RUN make"
        assert step.started_at == T0
        assert step.completed_at == T0 + timedelta(seconds=9)
        assert step.cached and step.error == "exit code 2"


def test_logs_become_lines_and_stop_at_the_cap(store: Store) -> None:
    build_id = running_build(store)[1]
    chunks = [
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"first\r\nsecond\n"),
        LogChunk(digest="sha256:x", stream=2, at=T0, data=b"third"),
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"x" * 100),
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"never stored\n"),
    ]
    # Three short lines cost 3 * MIN_LINE_COST (192); the 100-byte line passes the cap.
    with store.transaction() as session:
        steps.apply(session, build_id, [vertex(name="RUN make")], chunks, cap=250)
    with store.transaction() as session:
        lines = queries.log_page(session, build_id, "sha256:x", limit=10, after_id=0)
        texts = [line.text for line in lines]
        [step] = queries.steps_page(session, build_id, limit=10, after=None)
        volume = queries.log_volume(session, build_id)
    assert texts[:3] == ["first", "second", "third"]
    assert len(texts) == 4 and "250" in texts[3]
    assert volume is not None and volume.bytes == 3 * steps.MIN_LINE_COST and volume.truncated
    assert [line.stream for line in lines[:3]] == [1, 1, 2]
    assert step.has_logs


def test_a_flood_of_empty_lines_costs_each_line_its_least_cost(either_store: Store) -> None:
    """2 MiB of newlines made 2 million rows (138 s in the recorder, 5 GB of its memory): now each line
    costs at least MIN_LINE_COST of the cap, so a build's rows stay under cap / MIN_LINE_COST."""
    build_id = running_build(either_store)[1]
    cap = 10 * steps.MIN_LINE_COST
    flood = [LogChunk(digest="sha256:x", stream=1, at=T0, data=b"\n" * 4) for _ in range(5)]
    with either_store.transaction() as session:
        steps.apply(session, build_id, [], flood, cap=cap)
    with either_store.transaction() as session:
        texts = [line.text for line in queries.log_page(session, build_id, "sha256:x", limit=100, after_id=0)]
        volume = queries.log_volume(session, build_id)
    # Two chunks of four lines fit whole; of the third, the two lines that still fit are kept.
    assert texts[:10] == [""] * 10
    assert len(texts) == 11 and "[opendepot] log truncated" in texts[10]
    assert volume is not None and volume.bytes == cap and volume.truncated


def test_long_lines_cost_their_length(store: Store) -> None:
    build_id = running_build(store)[1]
    line = b"y" * (3 * steps.MIN_LINE_COST) + b"\n"
    with store.transaction() as session:
        steps.apply(session, build_id, [], [LogChunk("sha256:x", 1, T0, line * 2)])
    with store.transaction() as session:
        volume = queries.log_volume(session, build_id)
        count = len(queries.log_page(session, build_id, "sha256:x", limit=10, after_id=0))
    assert volume is not None and volume.bytes == 2 * len(line) and count == 2


def test_search_numbers_each_hit_within_its_step(either_store: Store) -> None:
    """Two steps' lines interleave in arrival order; a hit's number counts its own step's lines only."""
    build_id = running_build(either_store)[1]
    chunks = [
        LogChunk("sha256:a", 1, T0, b"a one\na two needle\n"),
        LogChunk("sha256:b", 1, T0, b"b one\nb two\nb three NEEDLE\n"),
        LogChunk("sha256:a", 1, T0, b"a three\na four needle\n"),
    ]
    with either_store.transaction() as session:
        steps.apply(session, build_id, [vertex(digest="sha256:a"), vertex(digest="sha256:b")], chunks)
    with either_store.transaction() as session:
        build = session.get(Build, build_id)
        assert build is not None
        hits = builds.search_log(session, build, "needle")
        ids = {s.digest: s.id for s in queries.all_steps(session, build_id, 10)}
    assert [(h.step_id, h.line_number, h.text) for h in hits] == [
        (ids["sha256:a"], 2, "a two needle"),
        (ids["sha256:b"], 3, "b three NEEDLE"),
        (ids["sha256:a"], 4, "a four needle"),
    ]


def test_a_report_naming_more_vertices_than_bound_parameters_is_kept_to_the_step_bound(
    either_store: Store,
) -> None:
    """70,000 vertices in one report: PostgreSQL takes at most 65,535 bound parameters, and naming each digest
    in one query was an internal error there. An existing step among them is still found and updated."""
    build_id = running_build(either_store)[1]
    with either_store.transaction() as session:
        steps.apply(session, build_id, [vertex(digest="sha256:known", name="RUN first")], [])
    flood = [vertex(digest=f"sha256:{i:064x}", name="n") for i in range(70_000)]
    flood.append(vertex(digest="sha256:known", name="RUN renamed", completed=T0))
    with either_store.transaction() as session:
        steps.apply(session, build_id, flood, [])
    with either_store.transaction() as session:
        kept = queries.all_steps(session, build_id, 10 * steps.MAX_STEPS)
    assert len(kept) == steps.MAX_STEPS + 1  # and the marker step
    [known] = [s for s in kept if s.digest == "sha256:known"]
    assert known.name == "RUN renamed" and known.completed_at == T0


def test_nul_characters_are_stored_as_replacement_characters(either_store: Store) -> None:
    """PostgreSQL's text refuses a NUL: binary log output or a hostile vertex name must not lose a batch."""
    build_id = running_build(either_store)[1]
    updates = [
        vertex(name="RUN a\x00b", error="failed\x00", completed=T0),
        vertex(digest="sha256:\x00", name="never a step"),
    ]
    chunks = [
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"before\x00after\n"),
        LogChunk(digest="sha256:\x00", stream=1, at=T0, data=b"dropped\n"),
    ]
    with either_store.transaction() as session:
        steps.apply(session, build_id, updates, chunks)
    with either_store.transaction() as session:
        [step] = queries.steps_page(session, build_id, limit=10, after=None)
        lines = queries.log_page(session, build_id, "sha256:x", limit=10, after_id=0)
    assert (step.digest, step.name, step.error) == ("sha256:x", "RUN a\ufffdb", "failed\ufffd")
    assert step.completed_at == T0 and step.has_logs
    assert [line.text for line in lines] == ["before\ufffdafter"]


def test_two_writers_adding_the_same_step_at_once_both_succeed(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's recorder and the CLI's status stream report the same vertex (`[depot] launching`) at
    the same moment. The second waits for the first and then finds its step and its log volume: every
    writer of a build's steps locks the build's row first (PostgreSQL; on SQLite the store's write lock runs
    one transaction after the other). Before, both read the step count and the log volume, then wrote: the
    volume lost one writer's bytes (the log cap and the history quota counted less than was kept)."""
    store = either_store
    build_id = running_build(store)[1]
    with store.transaction() as session:  # the build's log volume row exists: both will read it
        steps.apply(session, build_id, [], [LogChunk(digest="sha256:early", stream=1, at=T0, data=b"x\n")])
    read_volume = queries.log_volume

    def log_volume_then_wait(session: Session, build: str) -> LogVolume | None:
        # A slow read: without the lock the other transaction reads the same (stale) volume meanwhile.
        volume = read_volume(session, build)
        time.sleep(0.3)
        return volume

    monkeypatch.setattr(queries, "log_volume", log_volume_then_wait)
    reports = [
        (
            [vertex(digest="sha256:launch", name="[depot] launching", started=T0)],
            [LogChunk(digest="sha256:launch", stream=1, at=T0, data=b"from the CLI\n")],
        ),
        (
            [vertex(digest="sha256:launch", completed=T0 + timedelta(seconds=2), cached=True)],
            [LogChunk(digest="sha256:launch", stream=1, at=T0, data=b"from the gateway\n")],
        ),
    ]

    def record(report: tuple[list[VertexUpdate], list[LogChunk]]) -> None:
        with store.transaction() as session:
            steps.apply(session, build_id, *report)

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(record, report) for report in reports]:
            done.result()  # neither raised

    with store.transaction() as session:
        [step] = [
            s
            for s in queries.steps_page(session, build_id, limit=10, after=None)
            if s.digest == "sha256:launch"
        ]
        lines = queries.log_page(session, build_id, "sha256:launch", limit=10, after_id=0)
        volume = queries.log_volume(session, build_id)
        assert volume is not None
        # Whichever came second merged into the row the first added: nothing of either report is lost.
        assert step.name == "[depot] launching"
        assert step.started_at == T0 and step.started_known
        assert step.completed_at == T0 + timedelta(seconds=2)
        assert step.cached and step.has_logs
        assert sorted(line.text for line in lines) == ["from the CLI", "from the gateway"]
        assert volume.bytes == 3 * steps.MIN_LINE_COST  # three lines, each shorter than a line's least cost


def test_a_cached_step_is_metered_with_its_latest_real_run_in_the_project(store: Store) -> None:
    """Several cached steps are metered from one query: per name, the latest run that executed, in another
    build of the same project; a name that never ran saves nothing."""
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        earlier, later, cached_run, now = (
            builds.create_build(session, admin, project.id, [])[0].id for _ in range(4)
        )
    runs = [
        (earlier, "RUN make", T0, 10),
        (earlier, "COPY . .", T0, 2),
        (later, "RUN make", T0 + timedelta(hours=1), 30),  # the latest real run of RUN make
    ]
    with store.transaction() as session:
        for i, (build_id, name, start, seconds) in enumerate(runs):
            done = start + timedelta(seconds=seconds)
            steps.apply(
                session,
                build_id,
                [vertex(digest=f"sha256:{i}", name=name, started=start, completed=done)],
                [],
            )
        # A cached run after both does not count: it executed nothing.
        at = T0 + timedelta(hours=2)
        steps.apply(session, cached_run, [vertex(name="RUN make", started=at, completed=at, cached=True)], [])
    reported = [
        vertex(digest="sha256:a", name="RUN make", started=T0, completed=T0, cached=True),
        vertex(digest="sha256:b", name="COPY . .", started=T0, completed=T0, cached=True),
        vertex(digest="sha256:c", name="RUN never-ran", started=T0, completed=T0, cached=True),
    ]
    with store.transaction() as session:
        steps.apply(session, now, reported, [])
    with store.transaction() as session:
        saved = {s.name: s.saved_seconds for s in queries.steps_page(session, now, limit=10, after=None)}
    assert saved == {"RUN make": 30.0, "COPY . .": 2.0, "RUN never-ran": 0.0}


def test_updates_for_a_deleted_build_are_dropped_quietly(either_store: Store) -> None:
    """The recorder may still hold a build's last updates when the build is deleted (its project, the
    retention, the history quota): they are dropped, not an integrity error in the recorder's log."""
    store = either_store
    build_id = running_build(store)[1]
    with store.transaction() as session:
        queries.delete_builds(session, [build_id])
    with store.transaction() as session:
        steps.apply(
            session,
            build_id,
            [vertex(name="RUN late")],
            [LogChunk(digest="sha256:x", stream=1, at=T0, data=b"late\n")],
        )
    with store.transaction() as session:
        assert queries.steps_page(session, build_id, limit=10, after=None) == []


def test_the_last_real_run_is_an_index_seek_past_the_cached_runs(store: Store) -> None:
    """Metering a cache hit runs inside the recorder's write, which FinishBuild waits for: it must not grow
    with the project's rebuilds. A window over every run of the step's name took 66 ms after 5,000
    rebuilds of 18 steps; the lookup is now one seek per name on (project, name, cached)."""
    statement = str(queries._LAST_REAL_RUN.compile(store.engine))
    params = ("p", "RUN make", "b", 1, 0)[: statement.count("?")]
    with store.engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
    [(*_ids, detail)] = plan
    assert "USING INDEX ix_build_steps_real_runs (project_id=? AND name=? AND cached=?)" in detail, plan


@pytest.mark.parametrize("forged_id", ["abc", "²", "9999999999999999999", "-1", "1e3", ""])
def test_a_steps_or_logs_token_whose_id_is_no_row_number_is_invalid_argument(
    either_store: Store, forged_id: str
) -> None:
    """Both lists key on integer row ids: a forged token's id went to int() (ValueError) or to the database
    (SQLite's integer overflow), an `internal` error for anyone holding the build's token."""
    store = either_store
    admin, build_id = running_build(store)
    with store.transaction() as session:
        steps.apply(session, build_id, [vertex(name="RUN make", started=T0)], [])
        chunk = LogChunk(digest="sha256:x", stream=1, at=T0, data=b"line\n")
        steps.apply(session, build_id, [], [chunk])
    page = PageRequest(size=10, after=Cursor(T0, forged_id))
    with store.transaction() as session:
        with pytest.raises(InvalidArgument) as steps_error:
            builds.list_steps(session, admin, "", build_id, page)
        with pytest.raises(InvalidArgument) as logs_error:
            builds.step_logs(session, admin, "", build_id, "sha256:x", page)
    assert steps_error.value.field == logs_error.value.field == "page_token"
    # A real row number still pages.
    with store.transaction() as session:
        listed, _next = builds.list_steps(session, admin, "", build_id, PageRequest(10, Cursor(T0, "0")))
        lines, _next = builds.step_logs(
            session, admin, "", build_id, "sha256:x", PageRequest(10, Cursor(T0, "0"))
        )
    assert [s.name for s in listed] == ["RUN make"] and [line.text for line in lines] == ["line"]
