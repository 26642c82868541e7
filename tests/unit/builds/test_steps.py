"""Step merging: a vertex reported many times becomes one step; logs become lines, capped per build."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opendepot.builds import queries, steps
from opendepot.builds import service as builds
from opendepot.builds.steps import LogChunk, VertexUpdate
from opendepot.store import Store
from tests.support.domain import organization_with_project

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new_build(store: Store) -> str:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        build, _secret = builds.create_build(session, admin, project.id, [])
        return build.id


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
    build_id = new_build(store)
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
    build_id = new_build(store)
    chunks = [
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"first\r\nsecond\n"),
        LogChunk(digest="sha256:x", stream=2, at=T0, data=b"third"),
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"x" * 100),
        LogChunk(digest="sha256:x", stream=1, at=T0, data=b"never stored\n"),
    ]
    with store.transaction() as session:
        steps.apply(session, build_id, [vertex(name="RUN make")], chunks, cap=30)
    with store.transaction() as session:
        lines = queries.log_page(session, build_id, "sha256:x", limit=10, after_id=0)
        texts = [line.text for line in lines]
        [step] = queries.steps_page(session, build_id, limit=10, after=None)
    assert texts[:3] == ["first", "second", "third"]
    assert len(texts) == 4 and "30" in texts[3]
    assert [line.stream for line in lines[:3]] == [1, 1, 2]
    assert step.has_logs
