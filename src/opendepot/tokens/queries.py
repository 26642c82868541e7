from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .models import Token


def by_secret_hash(session: Session, secret_hash: str) -> Token | None:
    return session.scalars(select(Token).where(Token.secret_hash == secret_hash)).first()


def get(session: Session, token_id: str) -> Token | None:
    return session.get(Token, token_id)


def for_project(session: Session, project_id: str, kind: str) -> Sequence[Token]:
    stmt = (
        select(Token)
        .where(Token.project_id == project_id, Token.kind == kind)
        .order_by(Token.created_at, Token.id)
    )
    return session.scalars(stmt).all()


def count_for_project(session: Session, project_id: str) -> int:
    stmt = select(func.count()).select_from(Token).where(Token.project_id == project_id)
    return int(session.scalar(stmt) or 0)


def delete_token(session: Session, token_id: str) -> None:
    session.execute(delete(Token).where(Token.id == token_id))
