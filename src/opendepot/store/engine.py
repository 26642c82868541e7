"""Engine and unit of work. Domain services are synchronous functions of a Session; the API layer runs
them in worker threads through `Store.run`, one transaction each, so that a failure writes nothing."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from opendepot.datadir import DataDir
from opendepot.files import make_private, private_dir

T = TypeVar("T")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{DataDir(data_dir).database}"


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


class WriteLock:
    """Serialises the write transactions of every process on one SQLite file. Without it a writer that
    finds the database locked sleeps in SQLite's busy handler (1, 2, 5, 10, … ms steps) and notices the
    lock's release only at its next poll; a blocked flock wakes the moment the holder lets go. Threads of
    one process queue on a lock of their own first (flock is per open file, not per thread); reentrant, so
    a transaction opened inside another on the same thread does not wait for itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            if self._depth == 0:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._file(), fcntl.LOCK_UN)

    def acquire_now(self) -> bool:
        """Takes the lock if nobody holds it, without waiting; release() gives it back."""
        if not self._threads.acquire(blocking=False):
            return False
        if self._depth == 0:
            try:
                fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._threads.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._file(), fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def sqlite_write_lock(engine: Engine) -> WriteLock | None:
    """A lock file beside a file-backed SQLite database; none for PostgreSQL (row locks wake waiters at
    once) or an in-memory database."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return WriteLock(Path(f"{database}-writelock"))


class Store:
    def __init__(self, url: str, inline_writes: bool = False) -> None:
        """inline_writes: `run_short` may run a unit of work on the event loop's own thread. For an API
        worker, whose loop only answers RPCs; not for the supervisor, whose loop also relays the gateway's
        bytes while the recorder writes."""
        self.url = url
        self.inline_writes = inline_writes
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            _tune_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = sqlite_write_lock(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A read-write unit of work, committed on return. On SQLite it holds the write lock from before
        its first statement until after its commit."""
        if self.write_lock is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        with self.write_lock.held(), self._sessions() as session, session.begin():
            yield session

    def call(self, fn: Callable[[Session], T]) -> T:
        with self.transaction() as session:
            return fn(session)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """A read-write unit of work, in a worker thread: SQLite may wait for its write lock."""
        return await asyncio.to_thread(self.call, fn)

    async def run_short(self, fn: Callable[[Session], T]) -> T:
        """A unit of work of a few statements on one row or two (the build's own RPCs). With inline_writes
        and SQLite's write lock free at once, it runs on the loop's thread: it would hold the GIL for most
        of its millisecond anyway, and the hop to a thread and back (two wake-ups) costs about as much
        again. Otherwise, or for PostgreSQL, as `run`. Never for a unit that may take long: the loop waits."""
        lock = self.write_lock
        if self.inline_writes and lock is not None and lock.acquire_now():
            try:
                return self.call(fn)
            finally:
                lock.release()
        return await asyncio.to_thread(self.call, fn)

    def lookup(self, fn: Callable[[Connection], T]) -> T:
        """A single Core read on a bare connection: the cheapest path, for per-RPC lookups (auth)."""
        with self.engine.connect() as connection:
            return fn(connection)

    def read_now(self, fn: Callable[[Session], T]) -> T:
        with self._sessions() as session:
            return fn(session)

    async def read_lookup(self, fn: Callable[[Connection], T]) -> T:
        if self.engine.dialect.name == "sqlite":
            return self.lookup(fn)
        return await asyncio.to_thread(self.lookup, fn)

    async def read(self, fn: Callable[[Session], T]) -> T:
        """A read-only unit of work (rolled back at the end). SQLite readers never block in WAL mode and
        answer in microseconds, so they run inline; a network database gets a worker thread."""
        if self.engine.dialect.name == "sqlite":
            return self.read_now(fn)
        return await asyncio.to_thread(self.read_now, fn)

    def ping(self) -> bool:
        """The database answers (the health check)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    @classmethod
    def open(cls, url: str, data_dir: Path) -> Store:
        """The store as the server and admin commands use it: data dir created, schema at head."""
        private_dir(data_dir)
        store = cls(url)
        store.migrate()
        if store.engine.dialect.name == "sqlite" and store.engine.url.database:
            for suffix in ("", "-wal", "-shm"):
                make_private(Path(store.engine.url.database + suffix))
        return store

    def migrate(self) -> None:
        # The migrations import every domain's models: loaded only when a schema is brought up to date.
        from opendepot.migrations import upgrade_to_head

        upgrade_to_head(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_lock is not None:
            self.write_lock.close()
