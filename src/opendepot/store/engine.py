"""Engine and unit of work. Domain services are synchronous functions of a Session; the API layer runs
them in worker threads through `Store.run`, one transaction each, so that a failure writes nothing."""

from __future__ import annotations

import asyncio
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


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            _tune_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def call(self, fn: Callable[[Session], T]) -> T:
        with self.transaction() as session:
            return fn(session)

    async def run(self, fn: Callable[[Session], T]) -> T:
        """A read-write unit of work, in a worker thread: SQLite may wait for its write lock."""
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
