from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import (
    STARTED_DATA_DIRS,
    Server,
    create_postgres_database,
    drop_postgres_database,
    postgres_admin_url,
    remove_builder_users,
)

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running `opendepot serve` per store backend; every API test runs against both."""
    backend = request.param
    data_dir = tmp_path_factory.mktemp(f"server-{backend}") / "data"
    database_url = None
    db_name = None
    admin_url = postgres_admin_url()
    if backend == "postgres":
        if admin_url is None:
            pytest.skip("OPENDEPOT_TEST_POSTGRES_URL is not set (make test sets it up)")
        database_url, db_name = create_postgres_database(admin_url)
    srv = Server(data_dir=data_dir, database_url=database_url).start()
    try:
        yield srv
    finally:
        srv.stop()
        if admin_url and db_name:
            drop_postgres_database(admin_url, db_name)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def org(server: Server) -> tuple[str, str]:
    """A fresh organization for one test, so that tests sharing a server do not see each other."""
    return server.new_organization()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Sandboxed builders run as host users of their own; the servers are stopped by now."""
    if os.geteuid() == 0:
        for data_dir in STARTED_DATA_DIRS:
            remove_builder_users(data_dir)
