"""The Alembic migrations build exactly the schema the models declare."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from opendepot.builds.steps import STEP_ROW_BYTES
from opendepot.migrations import alembic_config
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


def test_existing_builds_get_the_size_of_their_steps(tmp_path: Path) -> None:
    """0022: the history quota counts step rows; builds from before it get their rows' size (characters and
    STEP_ROW_BYTES each), a build without steps 0."""
    engine = create_engine(sqlite_url(tmp_path))
    try:
        command.upgrade(alembic_config(engine), "0021")
        with engine.begin() as connection:
            for build in ("b1", "b2"):
                connection.execute(
                    text(
                        "INSERT INTO builds (id, project_id, organization_id, status, options, created_at)"
                        " VALUES (:id, 'p', 'o', 'success', '[]', '2026-01-01 00:00:00')"
                    ),
                    {"id": build},
                )
            for digest, name, error in (("sha256:a", "RUN x", None), ("sha256:bb", "RUN yy", "failed")):
                connection.execute(
                    text(
                        "INSERT INTO build_steps (build_id, project_id, digest, name, error, started_at,"
                        " started_known, cached, has_logs) VALUES ('b1', 'p', :digest, :name, :error,"
                        " '2026-01-01 00:00:00', 1, 0, 0)"
                    ),
                    {"digest": digest, "name": name, "error": error},
                )
        command.upgrade(alembic_config(engine), "head")
        with engine.connect() as connection:
            sizes: dict[str, int] = dict(connection.execute(text("SELECT id, steps_bytes FROM builds")).all())
    finally:
        engine.dispose()
    assert sizes == {"b1": 2 * STEP_ROW_BYTES + (8 + 5) + (9 + 6 + 6), "b2": 0}
