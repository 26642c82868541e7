"""The one place where SQL differs between SQLite and PostgreSQL. Queries call these helpers instead of
choosing a dialect themselves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(
    session: Session, model: type[Any], values: Mapping[str, Any], conflict_on: Sequence[str]
) -> None:
    """INSERT … ON CONFLICT DO NOTHING: a row another transaction inserted first is left as it is."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing(index_elements=list(conflict_on)))
