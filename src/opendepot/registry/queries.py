from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session

from opendepot.pagination import Cursor

from .models import Image, Maintenance


def newest_first(session: Session, project_id: str, *, limit: int, after: Cursor | None) -> Sequence[Image]:
    stmt = select(Image).where(Image.project_id == project_id)
    if after is not None:
        # The cursor's id is the tag: (pushed_at, tag) is unique within a project.
        stmt = stmt.where(tuple_(Image.pushed_at, Image.tag) < tuple_(after.created_at, after.id))
    return session.scalars(stmt.order_by(Image.pushed_at.desc(), Image.tag.desc()).limit(limit)).all()


def by_digests(session: Session, project_id: str, digests: Sequence[str]) -> Sequence[Image]:
    stmt = select(Image).where(Image.project_id == project_id, Image.digest.in_(digests))
    return session.scalars(stmt).all()


def digests_except(session: Session, project_id: str, digests: Sequence[str]) -> list[tuple[str, str]]:
    stmt = (
        select(Image.digest, Image.media_type)
        .where(Image.project_id == project_id, Image.digest.not_in(digests))
        .distinct()
    )
    return [(digest, media_type) for digest, media_type in session.execute(stmt)]


def by_tag(session: Session, project_id: str, tag: str) -> Image | None:
    return session.scalars(select(Image).where(Image.project_id == project_id, Image.tag == tag)).first()


def delete_tags(session: Session, project_id: str, tags: Sequence[str]) -> None:
    session.execute(delete(Image).where(Image.project_id == project_id, Image.tag.in_(tags)))


def stored_bytes(session: Session, project_id: str) -> int:
    """Bytes the project's tags name, each distinct image once (blobs shared between images count twice)."""
    distinct = select(Image.digest, func.max(Image.size_bytes).label("size")).where(
        Image.project_id == project_id
    )
    sub = distinct.group_by(Image.digest).subquery()
    return int(session.scalar(select(func.coalesce(func.sum(sub.c.size), 0))) or 0)


def last_push(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Image.pushed_at)))


def gc_marks(session: Session) -> tuple[datetime | None, datetime | None]:
    """When a garbage collection was last asked for, and when the last one that finished started: a plain
    read (maintenance() may insert the row)."""
    row = session.execute(
        select(Maintenance.gc_requested_at, Maintenance.gc_finished_at).where(Maintenance.id == 1)
    ).first()
    return (row[0], row[1]) if row is not None else (None, None)


def maintenance(session: Session) -> Maintenance:
    row = session.get(Maintenance, 1)
    if row is None:
        row = Maintenance(id=1)
        session.add(row)
        session.flush()
    return row
