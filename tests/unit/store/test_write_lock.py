"""SQLite writers of several processes (API workers, the supervisor's recorder) queue on the store's write
lock: none fails with `database is locked`, none loses another's update, and a waiter goes on as soon as
the holder commits instead of at SQLite's next busy poll."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

from sqlalchemy.orm import Session

from opendepot.builds import queries, steps
from opendepot.builds import service as builds
from opendepot.builds.status import SUCCESS
from opendepot.builds.steps import LogChunk
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from tests.support.domain import running_build

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Longer than a line's least cost (steps.MIN_LINE_COST): each chunk costs its length.
CHUNK = b"0123456789" * 7 + b"\n"


def append_logs(data_dir: str, build_id: str, times: int, start: Event) -> None:
    """One process's writer: read-modify-write of the build's log volume, one transaction per chunk."""
    store = Store(sqlite_url(Path(data_dir)))
    start.wait(30)
    for _ in range(times):
        with store.transaction() as session:
            steps.apply(session, build_id, [], [LogChunk(digest="sha256:x", stream=1, at=T0, data=CHUNK)])
    store.dispose()


def test_two_processes_appending_at_once_lose_nothing(tmp_path: Path) -> None:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    build_id = running_build(store)[1]
    with store.transaction() as session:  # the step the chunks belong to
        steps.apply(session, build_id, [], [LogChunk(digest="sha256:x", stream=1, at=T0, data=CHUNK)])
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Event()
    times = 150
    writers = [
        spawn.Process(target=append_logs, args=(str(tmp_path), build_id, times, start)) for _ in range(2)
    ]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0  # a `database is locked` would have ended it with 1
    with store.transaction() as session:
        volume = queries.log_volume(session, build_id)
        lines = queries.log_page(session, build_id, "sha256:x", limit=1000, after_id=0)
    assert volume is not None
    assert volume.bytes == len(CHUNK) * (2 * times + 1)  # no read-modify-write lost another's update
    assert len(lines) == 2 * times + 1
    store.dispose()


def hold_a_write(
    data_dir: str, build_id: str, holding: Event, release: Event, committing: Synchronized[float]
) -> None:
    """Writes inside a transaction, tells the test it holds the write lock, commits when told to."""
    store = Store(sqlite_url(Path(data_dir)))
    with store.transaction() as session:
        steps.apply(session, build_id, [], [LogChunk(digest="sha256:x", stream=1, at=T0, data=CHUNK)])
        holding.set()
        release.wait(30)
        committing.value = time.monotonic()
    store.dispose()


def behind_a_holder(store: Store, data_dir: Path, build_id: str, fn: Callable[[Session], object]) -> float:
    """Runs fn in a transaction of this process while another process holds a write transaction, then lets
    that one commit: how long after its commit fn began."""
    spawn = multiprocessing.get_context("spawn")
    holding, release, committing = spawn.Event(), spawn.Event(), spawn.Value("d", 0.0)
    holder = spawn.Process(target=hold_a_write, args=(str(data_dir), build_id, holding, release, committing))
    holder.start()
    assert holding.wait(30)
    began: list[float] = []

    def timed(session: Session) -> None:
        began.append(time.monotonic())
        fn(session)

    waiter = threading.Thread(target=store.call, args=(timed,))
    waiter.start()
    time.sleep(0.3)
    assert not began  # still waiting for the other process's transaction
    release.set()
    waiter.join(30)
    holder.join(30)
    assert holder.exitcode == 0 and began
    return began[0] - float(committing.value)


def test_a_writer_behind_another_process_goes_on_when_it_commits(tmp_path: Path) -> None:
    """SQLite's busy handler would notice the commit at its next poll (50-100 ms apart after a few hundred
    ms of waiting); the lock wakes the waiter at once."""
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    build_id = running_build(store)[1]
    chunk = [LogChunk(digest="sha256:y", stream=1, at=T0, data=CHUNK)]
    late = [
        behind_a_holder(store, tmp_path, build_id, lambda s: steps.apply(s, build_id, [], chunk))
        for _ in range(5)
    ]
    assert all(seconds >= 0 for seconds in late)  # one after the other
    assert statistics.median(late) < 0.02, late
    store.dispose()


def test_finish_build_answers_right_after_a_recorder_flush_and_is_durable(tmp_path: Path) -> None:
    """The gateway's recorder (another process) flushes a build's steps as the CLI finishes it: FinishBuild
    waits for that flush only, and once it returns its status is committed for every other connection."""
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    admin, build_id = running_build(store)
    late = behind_a_holder(
        store, tmp_path, build_id, lambda s: builds.finish_build(s, admin, build_id, builds.Outcome.success())
    )
    assert 0 <= late < 0.05
    other = Store(sqlite_url(tmp_path))
    with other.transaction() as session:
        assert queries.get(session, build_id).status == SUCCESS  # type: ignore[union-attr]
    other.dispose()
    store.dispose()


def test_an_inline_unit_of_work_waits_in_a_thread_when_the_lock_is_taken(tmp_path: Path) -> None:
    """With inline_writes, `run_short` works on the loop's thread only when the write lock is free at
    once; otherwise it waits in a worker thread and the loop goes on. `run` always uses a thread."""
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    inline = Store(sqlite_url(tmp_path), inline_writes=True)
    threads: list[str] = []

    def which_thread(_session: Session) -> None:
        threads.append(threading.current_thread().name)

    async def twice() -> None:
        await inline.run_short(which_thread)  # the lock is free
        with store.transaction():  # another Store (another open file) holds it
            waiting = asyncio.ensure_future(inline.run_short(which_thread))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # the loop is not blocked: this line runs
        await waiting

    asyncio.run(twice())
    asyncio.run(inline.run(which_thread))
    assert threads[0] == threading.main_thread().name
    assert threads[1] != threading.main_thread().name
    assert threads[2] != threading.main_thread().name
    inline.dispose()
    store.dispose()
