from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import Machine


def get(session: Session, project_id: str, platform: str) -> Machine | None:
    return session.get(Machine, (project_id, platform))


def all_machines(session: Session) -> Sequence[Machine]:
    return session.scalars(select(Machine)).all()


def forget_project(session: Session, project_id: str) -> None:
    session.execute(delete(Machine).where(Machine.project_id == project_id))
