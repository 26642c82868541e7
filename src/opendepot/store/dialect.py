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
    insert_ignore_many(session, model, [values], conflict_on)


def insert_ignore_many(
    session: Session, model: type[Any], rows: Sequence[Mapping[str, Any]], conflict_on: Sequence[str]
) -> None:
    """insert_ignore for several rows in one execution. The rows go as parameters (executemany) of a Core
    statement without values: it compiles once and is then found in the statement cache."""
    if not rows:
        return
    session.connection().execute(_ignoring(session, model, conflict_on), [dict(row) for row in rows])


def insert_ignore_many_returning(
    session: Session,
    model: type[Any],
    rows: Sequence[Mapping[str, Any]],
    conflict_on: Sequence[str],
    returning: str,
) -> list[Any]:
    """insert_ignore_many, answering the `returning` column of each row it inserted (not of those another
    transaction inserted first). SQLite >= 3.35 and PostgreSQL both return only the rows inserted."""
    if not rows:
        return []
    statement = _ignoring(session, model, conflict_on, returning)
    return list(session.connection().execute(statement, [dict(row) for row in rows]).scalars())


_IGNORING: dict[tuple[str, type[Any], tuple[str, ...], str | None], Any] = {}


def _ignoring(
    session: Session, model: type[Any], conflict_on: Sequence[str], returning: str | None = None
) -> Any:
    """The statement, built once per dialect, table, conflict target and returned column (callers pass
    constants): building it costs more than running it on the step recorder's path."""
    dialect = session.get_bind().dialect.name
    key = (dialect, model, tuple(conflict_on), returning)
    statement = _IGNORING.get(key)
    if statement is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(model.__table__).on_conflict_do_nothing(index_elements=list(conflict_on))
        if returning is not None:
            statement = statement.returning(model.__table__.c[returning])
        _IGNORING[key] = statement
    return statement
