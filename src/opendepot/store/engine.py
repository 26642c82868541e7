"""Engine and unit of work. Domain services are synchronous functions of a Session; the API layer runs
them in worker threads through `Store.run`, one transaction each, so that a failure writes nothing."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, Select, create_engine, event, text
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


@dataclass(frozen=True, slots=True)
class RowLookup(Generic[T]):
    """One Core select of plain columns (at most one row wanted), its parameters, and what to make of the
    row (None when there is none): the shape of the per-RPC reads `Store.read_row` runs."""

    statement: Select[Any]
    params: Mapping[str, Any]
    result: Callable[[Sequence[Any] | None], T]


class _SqlitePlan:
    """A select compiled once for SQLite: its SQL, the order of its parameters, and each column's result
    conversion (the columns' own types, e.g. UTCDateTime's aware datetimes)."""

    def __init__(
        self, sql: str, names: Sequence[str], convert: Sequence[Callable[[Any], Any] | None]
    ) -> None:
        self.sql, self.names, self.convert = sql, names, convert

    @classmethod
    def of(cls, engine: Engine, statement: Select[Any]) -> _SqlitePlan | None:
        """None for a statement this cannot run as written (a parameter whose type converts its value)."""
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        if compiled.positiontup is None:
            return None
        for bind in compiled.binds.values():
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                return None
        convert = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in statement.selected_columns
        ]
        return cls(str(compiled), list(compiled.positiontup), convert)

    def first(self, connection: Any, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        row = connection.execute(self.sql, [params[name] for name in self.names]).fetchone()
        if row is None:
            return None
        return tuple(value if f is None else f(value) for f, value in zip(self.convert, row, strict=True))


class _SqliteReader:
    """A DB-API connection of its own for `Store.read_row` on SQLite: the same statement through SQLAlchemy's
    Core costs ~60 µs (pool checkout, execution context, result object) where sqlite3 takes ~6. It stays in
    autocommit (sqlite3 opens no transaction for a SELECT), so each read sees every commit made before it,
    by any process: a revoked token is refused on its next call."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._raw: Any = None
        self._connection: Any = None
        self._pid = 0
        self._plans: dict[int, tuple[Select[Any], _SqlitePlan | None]] = {}

    def plan(self, statement: Select[Any]) -> _SqlitePlan | None:
        kept = self._plans.get(id(statement))
        if kept is None or kept[0] is not statement:
            kept = (statement, _SqlitePlan.of(self._engine, statement))
            self._plans[id(statement)] = kept
        return kept[1]

    def first(self, plan: _SqlitePlan, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        with self._lock:
            if self._connection is None or self._pid != os.getpid():
                raw = self._engine.raw_connection()  # the engine's PRAGMAs (WAL, busy timeout) applied
                self._raw, self._connection, self._pid = raw, raw.driver_connection, os.getpid()
                raw.detach()  # kept here, out of the pool
            return plan.first(self._connection, params)

    def close(self) -> None:
        with self._lock:
            if self._raw is not None and self._pid == os.getpid():
                self._raw.close()  # detached: closes the DB-API connection
            self._raw = self._connection = None


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
        # File-backed SQLite only: another connection to an in-memory database would see another database.
        self._reader = _SqliteReader(self.engine) if self.write_lock is not None else None

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

    async def read_row(self, lookup: RowLookup[T]) -> T:
        """A single-row Core read (per-RPC lookups: authentication). SQLite: inline on the loop, on the
        reader's own DB-API connection; otherwise as `read_lookup`."""
        reader = self._reader
        plan = reader.plan(lookup.statement) if reader is not None else None
        if reader is None or plan is None:
            return await self.read_lookup(
                lambda c: lookup.result(c.execute(lookup.statement, dict(lookup.params)).first())
            )
        return lookup.result(reader.first(plan, lookup.params))

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
        if self._reader is not None:
            self._reader.close()
        self.engine.dispose()
        if self.write_lock is not None:
            self.write_lock.close()
