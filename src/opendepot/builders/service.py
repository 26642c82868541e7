"""Machine rows: written by the manager (in the supervisor), read and flagged by API workers."""

from __future__ import annotations

from sqlalchemy.orm import Session

from opendepot.auth import Principal
from opendepot.builds import service as builds
from opendepot.clock import utcnow

from . import queries
from .models import Machine
from .states import ACTIVE, BuilderState


def set_state(
    session: Session,
    project_id: str,
    platform: str,
    state: BuilderState,
    *,
    pid: int | None = None,
    error: str | None = None,
) -> None:
    machine = queries.get(session, project_id, platform)
    if machine is None:
        machine = Machine(project_id=project_id, platform=platform, state=state, updated_at=utcnow())
        session.add(machine)
    # starting -> running keeps the pid recorded at start: a node taking over reaps builders by it.
    if pid is not None or state not in ACTIVE:
        machine.pid = pid
    machine.state, machine.error, machine.updated_at = state, error, utcnow()


def request_reset(session: Session, project_id: str) -> int:
    """Asks the manager to stop the project's builders and discard what the backend keeps of them (a
    stopped builder may still have a cache volume). Returns how many it must handle first."""
    machines = queries.of_project(session, project_id)
    for machine in machines:
        machine.state, machine.updated_at = BuilderState.RESETTING, utcnow()
    return len(machines)


def resetting(session: Session, project_id: str) -> bool:
    return any(m.state == BuilderState.RESETTING for m in queries.of_project(session, project_id))


def forget_project(session: Session, project_id: str) -> None:
    """A deleted project's builders are stopped (see `request_reset`): their rows go with it."""
    queries.forget_project(session, project_id)


def acquire(
    session: Session, principal: Principal, build_id: str, platform: str
) -> tuple[str, queries.MachineState | None]:
    """Takes or renews the build's lease; returns the build's project and its builder's (state, error):
    is the builder up?"""
    machine: queries.MachineState | None = None

    def builder_running(project_id: str) -> bool:
        nonlocal machine
        machine = queries.state(session, project_id, platform)
        return machine is not None and machine.state == BuilderState.RUNNING

    project_id = builds.acquire(session, principal, build_id, platform, builder_running)
    return project_id, machine
