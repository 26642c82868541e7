"""Alembic environment: runs against the engine the server passes in (never a URL from an .ini file)."""

from __future__ import annotations

from alembic import context

from opendepot.migrations.schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
