"""Fixtures shared by the unit tests that need a real store (SQLite in the test's tmp dir, migrated)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opendepot.sealed.box import SecretKey, new_key_text
from opendepot.sealed.vault import Vault
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from tests.support.server import create_postgres_database, drop_postgres_database, postgres_admin_url


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store on SQLite, and on a fresh PostgreSQL database when OPENDEPOT_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        store = Store.open(sqlite_url(tmp_path), tmp_path)
        yield store
        store.dispose()
        return
    admin_url = postgres_admin_url()
    if admin_url is None:
        pytest.skip("OPENDEPOT_TEST_POSTGRES_URL is not set (./dev test sets it up)")
    url, name = create_postgres_database(admin_url)
    store = Store.open(url, tmp_path)
    try:
        yield store
    finally:
        store.dispose()
        drop_postgres_database(admin_url, name)


@pytest.fixture
def vault(store: Store) -> Vault:
    return Vault(store, SecretKey(new_key_text()))
