from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

from sqlalchemy import Connection, Table, bindparam, delete, select
from sqlalchemy.orm import Session

from .models import Machine
from .states import BuilderState

_MACHINES = cast(Table, Machine.__table__)
# Built once: every GetBuildKitConnection asks whether its builder runs.
_STATE = select(_MACHINES.c.state, _MACHINES.c.error).where(
    _MACHINES.c.project_id == bindparam("project_id"), _MACHINES.c.platform == bindparam("platform")
)


def get(session: Session, project_id: str, platform: str) -> Machine | None:
    return session.get(Machine, (project_id, platform))


class MachineState(NamedTuple):
    state: str
    error: str | None


def state(session: Session, project_id: str, platform: str) -> MachineState | None:
    """The builder's state and error, without loading it as an object."""
    row = session.connection().execute(_STATE, {"project_id": project_id, "platform": platform}).first()
    return None if row is None else MachineState(*row)


def all_machines(session: Session) -> Sequence[Machine]:
    return session.scalars(select(Machine)).all()


def of_project(session: Session, project_id: str) -> Sequence[Machine]:
    return session.scalars(select(Machine).where(Machine.project_id == project_id)).all()


_RESETTING = select(_MACHINES.c.project_id, _MACHINES.c.platform).where(
    _MACHINES.c.state == BuilderState.RESETTING
)


def resetting(connection: Connection | Session) -> set[tuple[str, str]]:
    """(project, platform) of every builder asked to reset: the reconciler reads it five times a second."""
    return {(project, platform) for project, platform in connection.execute(_RESETTING)}


def forget_project(session: Session, project_id: str) -> None:
    session.execute(delete(Machine).where(Machine.project_id == project_id))
