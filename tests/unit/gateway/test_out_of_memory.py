"""Out-of-memory detection on a fake cgroup tree: the builder's OOM-kill counter (v1 memory.oom_control,
v2 memory.events) and limit, read by the step recorder when a step fails while a build holds the builder."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.auth import Principal, TokenKind
from opendepot.builders.sandbox import BuilderCgroups
from opendepot.builds import queries, steps
from opendepot.builds import service as builds
from opendepot.builds.status import FAILED
from opendepot.gateway.recorder import MemoryWatch, StepRecorder
from opendepot.gen.moby.buildkit.v1 import control_pb
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from tests.support.domain import running_build

KEY = "p1-amd64"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"
V2_EVENTS = "low 0\nhigh 0\nmax 7\noom 2\noom_kill {n}\noom_group_kill 0\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        yield store
    finally:
        store.dispose()


def v1_cgroups(root: Path) -> tuple[BuilderCgroups, Path]:
    (root / "pids").mkdir(parents=True)
    group = root / "memory" / "opendepot-test" / KEY
    group.mkdir(parents=True)
    (group / "memory.oom_control").write_text(V1_OOM_CONTROL.format(n=0))
    (group / "memory.limit_in_bytes").write_text(str(256 << 20))
    cgroups = BuilderCgroups("test", root=root)
    cgroups.own = {}  # the test's process sits at the root of the fake tree
    return cgroups, group


def test_v1_counter_and_limit(tmp_path: Path) -> None:
    cgroups, group = v1_cgroups(tmp_path)
    assert cgroups.memory_group(KEY) == group
    assert (cgroups.oom_kills(KEY), cgroups.memory_limit(KEY)) == (0, 256 << 20)
    (group / "memory.oom_control").write_text(V1_OOM_CONTROL.format(n=3))
    assert cgroups.oom_kills(KEY) == 3
    (group / "memory.limit_in_bytes").write_text("9223372036854771712")  # v1's "no limit"
    assert cgroups.memory_limit(KEY) is None
    assert cgroups.oom_kills("gone-amd64") == 0 and cgroups.memory_limit("gone-amd64") is None


def test_v2_counter_and_limit(tmp_path: Path) -> None:
    group = tmp_path / "opendepot-test" / KEY
    group.mkdir(parents=True)
    (group / "memory.events").write_text(V2_EVENTS.format(n=1))
    (group / "memory.max").write_text(str(2 << 30))
    cgroups = BuilderCgroups("test", root=tmp_path)
    cgroups.own = {}
    assert not cgroups.v1
    assert (cgroups.oom_kills(KEY), cgroups.memory_limit(KEY)) == (1, 2 << 30)
    (group / "memory.max").write_text("max\n")
    assert cgroups.memory_limit(KEY) is None


def status(digest: str, error: str = "", log: bytes = b"") -> bytes:
    at = Timestamp.from_datetime(datetime(2026, 1, 1, tzinfo=UTC))
    vertex = control_pb.Vertex(digest=digest, name=f"RUN {digest}", started=at, error=error)
    if error:
        vertex.completed = at
    logs = [control_pb.VertexLog(vertex=digest, timestamp=at, stream=1, msg=log)] if log else []
    return control_pb.StatusResponse(vertexes=[vertex], logs=logs).to_binary()


def step_and_logs(store: Store, build_id: str, digest: str) -> tuple[str | None, list[str]]:
    with store.transaction() as session:
        step = queries.step(session, build_id, digest)
        assert step is not None
        lines = queries.log_page(session, build_id, digest, limit=100, after_id=0)
        return step.error, [line.text for line in lines]


def test_a_step_failing_after_an_oom_kill_says_out_of_memory(store: Store, tmp_path: Path) -> None:
    cgroups, group = v1_cgroups(tmp_path / "cgroup")
    build_id = running_build(store)[1]
    recorder = StepRecorder(store)
    (group / "memory.oom_control").write_text(V1_OOM_CONTROL.format(n=5))  # kills of earlier builds
    recorder.watch_memory(
        build_id, "amd64", MemoryWatch(lambda: cgroups.oom_kills(KEY), cgroups.memory_limit(KEY), "2x4")
    )
    assert recorder.watching_memory(build_id, "amd64")

    # A step that fails with no new kill is not out of memory.
    recorder.status(build_id, status("sha256:a", error="exit code: 1", log=b"nope\n"))
    (group / "memory.oom_control").write_text(V1_OOM_CONTROL.format(n=6))
    recorder.status(build_id, status("sha256:b", log=b"growing\n"))  # still running: nothing to say yet
    recorder.status(build_id, status("sha256:b", error="exit code: 137"))
    recorder.status(build_id, status("sha256:b", error="exit code: 137"))  # reported again: noted once
    recorder.status(build_id, status("sha256:c", error="exit code: 137"))  # no further kill
    asyncio.run(recorder.flush())

    message = "out of memory: the builder's memory limit (256 MiB, capped by the operator; hardware 2x4)"
    assert step_and_logs(store, build_id, "sha256:a") == ("exit code: 1", ["nope"])
    error, lines = step_and_logs(store, build_id, "sha256:b")
    assert error is not None and error.startswith(f"exit code: 137\n{message} was reached; the step")
    assert lines == ["growing", f"[opendepot] {message} was reached; the step was killed"]
    assert step_and_logs(store, build_id, "sha256:c") == ("exit code: 137", [])

    with store.transaction() as session:
        # The client reports the failure again, without the line: the step keeps it.
        steps.apply(
            session, build_id, [steps.VertexUpdate("sha256:b", "", None, None, False, "exit code: 137")], []
        )
    assert step_and_logs(store, build_id, "sha256:b")[0] == error

    # The build's error gets the line when the client finishes it with the step's failure.
    with store.transaction() as session:
        build = queries.get(session, build_id)
        assert build is not None
        principal = Principal(
            kind=TokenKind.ORGANIZATION, token_id="t", organization_id=build.organization_id
        )
        finished = builds.finish_build(session, principal, build_id, builds.Outcome.failed("exit code: 137"))
        assert finished.status == FAILED
        assert finished.error == f"exit code: 137\n{message} was reached; the step was killed"

    recorder.unwatch_memory(build_id, "amd64")
    assert not recorder.watching_memory(build_id, "amd64")


def test_the_message_names_the_limit_and_the_hardware() -> None:
    assert steps.out_of_memory_message(8 << 30, "4x8") == (
        "out of memory: the builder's memory limit (8 GiB, hardware 4x8) was reached; the step was killed"
    )
    assert steps.out_of_memory_message(None, "4x8").startswith(
        "out of memory: the builder's memory limit was"
    )


def test_a_build_finished_before_its_step_is_recorded_gets_the_line_too(store: Store) -> None:
    build_id = running_build(store)[1]
    with store.transaction() as session:
        build = queries.get(session, build_id)
        assert build is not None
        org_id = build.organization_id
        principal = Principal(kind=TokenKind.ORGANIZATION, token_id="t", organization_id=org_id)
        builds.finish_build(session, principal, build_id, builds.Outcome.failed("exit code: 137"))
    line = steps.out_of_memory_message(4 << 30, "2x4")
    oom = steps.VertexUpdate("sha256:b", "RUN x", None, None, False, f"exit code: 137\n{line}")
    with store.transaction() as session:
        steps.apply(session, build_id, [oom], [])
    with store.transaction() as session:
        build = queries.get(session, build_id)
        assert build is not None and build.error == f"exit code: 137\n{line}"
        steps.apply(session, build_id, [oom], [])  # seen again: the line is not added twice
    with store.transaction() as session:
        build = queries.get(session, build_id)
        assert build is not None and build.error == f"exit code: 137\n{line}"


def test_an_oom_step_recorded_while_the_build_finishes_still_adds_the_line(either_store: Store) -> None:
    """The recorder's write waits for a FinishBuild in flight (the build's row lock on PostgreSQL, the write
    lock on SQLite), then reads the error that FinishBuild set and adds the step's line to it."""
    admin, build_id = running_build(either_store)
    line = steps.out_of_memory_message(4 << 30, "2x4")
    oom = steps.VertexUpdate("sha256:b", "RUN x", None, None, False, f"exit code: 137\n{line}")
    recorder = threading.Thread(
        target=either_store.call, args=(lambda session: steps.apply(session, build_id, [oom], []),)
    )
    with either_store.transaction() as session:
        builds.finish_build(session, admin, build_id, builds.Outcome.failed("exit code: 137"))
        recorder.start()
        recorder.join(0.5)
        assert recorder.is_alive(), "the recorder's write did not wait for the finish's transaction"
    recorder.join(30)
    assert not recorder.is_alive()
    with either_store.transaction() as session:
        build = queries.get(session, build_id)
        assert build is not None and build.status == FAILED
        assert build.error == f"exit code: 137\n{line}"
