from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Row, Table, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from .models import Token

_TOKENS = cast(Table, Token.__table__)
_t = Token.__table__.c
# Built once: constructing a select costs more than running it. Every RPC runs this one.
PRINCIPAL = select(
    _t.id, _t.kind, _t.organization_id, _t.project_id, _t.build_id, _t.secret_hash, _t.expires_at
).where(_t.secret_hash == bindparam("secret_hash"))


def insert(session: Session, token: Token) -> None:
    """A new token, written at once with a Core INSERT (every CreateBuild issues one: the session's unit of
    work costs more than the statement). The object stays outside the session."""
    values = {column.key: getattr(token, column.key) for column in _TOKENS.columns}
    session.connection().execute(_TOKENS.insert(), values)


def principal_row(
    connection: Connection | Session, secret_hash: str
) -> Row[str, str, str, str | None, str | None, str, datetime | None] | None:
    """The hot path of every RPC: the columns a Principal needs, without the ORM's loading machinery."""
    return connection.execute(PRINCIPAL, {"secret_hash": secret_hash}).first()


def get(session: Session, token_id: str) -> Token | None:
    return session.get(Token, token_id)


def for_project(session: Session, project_id: str, kind: str) -> Sequence[Token]:
    stmt = (
        select(Token)
        .where(Token.project_id == project_id, Token.kind == kind)
        .order_by(Token.created_at, Token.id)
    )
    return session.scalars(stmt).all()


def for_organization(session: Session, organization_id: str, kinds: Sequence[str]) -> Sequence[Token]:
    stmt = (
        select(Token)
        .where(
            Token.organization_id == organization_id,
            Token.kind.in_(list(kinds)),
            Token.project_id.is_(None),
        )
        .order_by(Token.created_at, Token.id)
    )
    return session.scalars(stmt).all()


def count_for_project(session: Session, project_id: str) -> int:
    stmt = select(func.count()).select_from(Token).where(Token.project_id == project_id)
    return int(session.scalar(stmt) or 0)


def delete_token(session: Session, token_id: str) -> None:
    session.execute(delete(Token).where(Token.id == token_id))


def delete_expired(session: Session, now: datetime) -> None:
    session.execute(delete(Token).where(Token.expires_at.is_not(None), Token.expires_at < now))


# Built once: it runs on every build's FinishBuild, and constructing it costs more than running it.
_EXPIRE_BUILD_TOKENS = (
    update(Token)
    .where(
        Token.build_id.in_(bindparam("token_builds", expanding=True)),
        Token.kind.in_(("build", "pull")),  # a build token's pull tokens carry its build
        or_(Token.expires_at.is_(None), Token.expires_at > bindparam("expiry")),
    )
    .values(expires_at=bindparam("expiry"))
    # Tokens are read on a bare connection (auth), never held in a session: nothing to evaluate in memory.
    .execution_options(synchronize_session=False)
)


def expire_build_tokens(session: Session, build_ids: Sequence[str], at: datetime) -> None:
    """Sets the expiry of the builds' tokens (and of the pull tokens they asked for) to at, unless they
    already expire sooner."""
    if build_ids:
        params = {"token_builds": list(build_ids), "expiry": at}
        session.connection().execute(_EXPIRE_BUILD_TOKENS, params)
