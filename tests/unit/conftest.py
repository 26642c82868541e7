"""Fixtures shared by the unit tests that need a real store (SQLite in the test's tmp dir, migrated)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opendepot.sealed.box import SecretKey, new_key_text
from opendepot.sealed.vault import Vault
from opendepot.store import Store
from opendepot.store.engine import sqlite_url


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture
def vault(store: Store) -> Vault:
    return Vault(store, SecretKey(new_key_text()))
