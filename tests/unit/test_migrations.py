"""The Alembic migrations build exactly the schema the models declare."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from opendepot.migrations.schema import metadata
from opendepot.store import Store
from opendepot.store.engine import sqlite_url


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            differences = compare_metadata(context, metadata)
    finally:
        store.dispose()
    assert differences == []
