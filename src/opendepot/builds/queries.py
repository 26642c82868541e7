from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, defer

from opendepot.pagination import Cursor
from opendepot.projects.models import Project
from opendepot.store.dialect import insert_ignore, insert_ignore_many_returning

from .models import Build, Lease, LogLine, LogVolume, StatusReport, Step
from .status import BuildStatus


def get(session: Session, build_id: str) -> Build | None:
    return session.get(Build, build_id)


# A build's options are up to 256 KiB of JSON (MAX_OPTIONS_BYTES): queries of many builds leave them unloaded
# unless asked. A list of 1,000 builds with them took 500 MB of a worker's memory for a 0.2 MB answer.
WITHOUT_OPTIONS = defer(Build.options, raiseload=True)


def newest_first(
    session: Session,
    project_id: str,
    *,
    limit: int,
    after: Cursor | None,
    status: str | None = None,
    with_options: bool = False,
) -> Sequence[Build]:
    stmt = select(Build).where(Build.project_id == project_id)
    if not with_options:
        stmt = stmt.options(WITHOUT_OPTIONS)
    if status is not None:
        stmt = stmt.where(Build.status == status)
    if after is not None:
        stmt = stmt.where(tuple_(Build.created_at, Build.id) < tuple_(after.created_at, after.id))
    return session.scalars(stmt.order_by(Build.created_at.desc(), Build.id.desc()).limit(limit)).all()


class BuildForLease(NamedTuple):
    organization_id: str
    project_id: str
    status: str
    lease_id: str | None  # its lease on the platform asked for, if it has one
    hardware: str | None  # its project's


_BUILDS = cast(Table, Build.__table__)
_LEASES = cast(Table, Lease.__table__)
_PROJECTS = cast(Table, Project.__table__)
_VOLUMES = cast(Table, LogVolume.__table__)
# What a build keeps in bulk, deleted in slices before the build itself (the retention sweep).
_KEPT_IN_BULK = tuple(cast(Table, model.__table__) for model in (LogLine, StatusReport, Step))


def _reaching(*columns: Any) -> Select[Any]:
    """The build's organization and project (who reaches it: `Principal.require_build_access`) and columns,
    its id bound as build_id. The CLI's RPCs on a build read these, never the build's row with its options."""
    return select(_BUILDS.c.organization_id, _BUILDS.c.project_id, *columns).where(
        _BUILDS.c.id == bindparam("build_id")
    )


# Built once, on every connection's path, and Core: only the columns acquiring a lease needs, no ORM objects
# (loading a whole Build and Lease was a third of GetBuildKitConnection's server time).
# The build's row is share-locked (PostgreSQL): a FinishBuild or reaper that ends the build waits for this
# transaction (and so releases the lease it takes), or ended it first and this read sees it ended. Before,
# a lease taken just as the build ended stayed live on a finished build until the lease timeout.
_BUILD_WITH_LEASE = (
    _reaching(_BUILDS.c.status, _LEASES.c.id, _PROJECTS.c.hardware)
    .select_from(_BUILDS)
    .outerjoin(_LEASES, and_(_LEASES.c.build_id == _BUILDS.c.id, _LEASES.c.platform == bindparam("platform")))
    .outerjoin(_PROJECTS, _PROJECTS.c.id == _BUILDS.c.project_id)
    .with_for_update(read=True, of=_BUILDS)
)
_RENEW_LEASE = (
    update(_LEASES)
    .where(_LEASES.c.id == bindparam("lease_id"))
    .values(heartbeat_at=bindparam("now"), released_at=None)
)
_RENEW_SERVED_LEASE = _RENEW_LEASE.values(served_at=func.coalesce(_LEASES.c.served_at, bindparam("now")))


def build_with_lease(session: Session, build_id: str, platform: str) -> BuildForLease | None:
    """What acquiring the build's lease on platform needs, in one query."""
    row = (
        session.connection().execute(_BUILD_WITH_LEASE, {"build_id": build_id, "platform": platform}).first()
    )
    return None if row is None else BuildForLease(*row)


def renew_lease(session: Session, lease_id: str, now: datetime, served: bool = False) -> None:
    """Renews the lease; served: its builder runs, so it is served from now unless it was before."""
    statement = _RENEW_SERVED_LEASE if served else _RENEW_LEASE
    session.connection().execute(statement, {"lease_id": lease_id, "now": now})


class BuildLease(NamedTuple):
    organization_id: str
    project_id: str
    status: str
    lease_id: str | None  # None: the build holds no live lease (one row, the build's)
    platform: str | None
    heartbeat_at: datetime | None


# The build and its live leases, for the CLI's heartbeats (one every few seconds per build).
_BUILD_LIVE_LEASES = _reaching(
    _BUILDS.c.status, _LEASES.c.id, _LEASES.c.platform, _LEASES.c.heartbeat_at
).select_from(
    _BUILDS.outerjoin(_LEASES, and_(_LEASES.c.build_id == _BUILDS.c.id, _LEASES.c.released_at.is_(None)))
)
_RENEW_HEARTBEATS = (
    update(_LEASES)
    .where(_LEASES.c.id.in_(bindparam("lease_ids", expanding=True)))
    .values(heartbeat_at=bindparam("now"))
)


def build_live_leases(session: Session, build_id: str) -> list[BuildLease]:
    """One row per live lease of the build (or one with no lease); none if there is no such build."""
    rows = session.connection().execute(_BUILD_LIVE_LEASES, {"build_id": build_id})
    return [BuildLease(*row) for row in rows]


def renew_heartbeats(session: Session, lease_ids: Sequence[str], now: datetime) -> None:
    if lease_ids:
        session.connection().execute(_RENEW_HEARTBEATS, {"lease_ids": list(lease_ids), "now": now})


# Built once, like the other statements on a build's path: constructing one costs more than running it.

# Core, on the session's connection: no caller holds Lease objects in the session it releases from. Every
# writer changes a build's row before its leases (PostgreSQL locks rows in the order they are written).
_RELEASE_LEASES = (
    update(_LEASES)
    .where(_LEASES.c.build_id == bindparam("lease_build"), _LEASES.c.released_at.is_(None))
    .values(released_at=bindparam("released"))
)
_RELEASE_PLATFORM_LEASES = _RELEASE_LEASES.where(_LEASES.c.platform == bindparam("lease_platform"))
_RELEASE_BUILDS_LEASES = (
    update(_LEASES)
    .where(_LEASES.c.build_id.in_(bindparam("lease_builds", expanding=True)), _LEASES.c.released_at.is_(None))
    .values(released_at=bindparam("released"))
)


def release_leases(session: Session, build_id: str, now: datetime, platform: str | None = None) -> None:
    params: dict[str, object] = {"lease_build": build_id, "released": now}
    if platform is None:
        session.connection().execute(_RELEASE_LEASES, params)
    else:
        session.connection().execute(_RELEASE_PLATFORM_LEASES, {**params, "lease_platform": platform})


def release_leases_of(session: Session, build_ids: Sequence[str], now: datetime) -> int:
    """Releases every live lease of these builds; returns how many."""
    if not build_ids:
        return 0
    params = {"lease_builds": list(build_ids), "released": now}
    return int(session.connection().execute(_RELEASE_BUILDS_LEASES, params).rowcount)


class BuildResult(NamedTuple):
    organization_id: str
    project_id: str
    status: str
    error: str | None


# FinishBuild's statements: the CLI waits for its answer before it exits.
_LOCKED_RESULT = _reaching(_BUILDS.c.status, _BUILDS.c.error).with_for_update()
_SET_FINISHED = (
    update(_BUILDS)
    .where(_BUILDS.c.id == bindparam("build_id"))
    .values(status=bindparam("status"), error=bindparam("error"), finished_at=bindparam("finished_at"))
)


_SET_ERROR = update(_BUILDS).where(_BUILDS.c.id == bindparam("build_id")).values(error=bindparam("error"))


def locked_result(session: Session, build_id: str) -> BuildResult | None:
    """Who reaches the build, its status and error; its row locked until commit (PostgreSQL; SQLite's one
    writer at a time)."""
    row = session.connection().execute(_LOCKED_RESULT, {"build_id": build_id}).first()
    return None if row is None else BuildResult(*row)


def set_finished(session: Session, build_id: str, status: str, error: str | None, at: datetime) -> None:
    params = {"build_id": build_id, "status": status, "error": error, "finished_at": at}
    session.connection().execute(_SET_FINISHED, params)


def set_error(session: Session, build_id: str, error: str) -> None:
    session.connection().execute(_SET_ERROR, {"build_id": build_id, "error": error})


# The reaper's and the take-over's: builds it chose that are still running when it writes end.
_END_RUNNING = (
    update(_BUILDS)
    .where(_BUILDS.c.id.in_(bindparam("build_ids", expanding=True)), _BUILDS.c.status == BuildStatus.RUNNING)
    .values(status=bindparam("status"), error=bindparam("error"), finished_at=bindparam("finished_at"))
    .returning(_BUILDS.c.id)
)


def end_running(
    session: Session, build_ids: Sequence[str], status: str, error: str, at: datetime
) -> list[str]:
    """Ends those of the builds that still run (not finished by their CLI since they were chosen); returns
    their ids."""
    if not build_ids:
        return []
    params = {"build_ids": list(build_ids), "status": status, "error": error, "finished_at": at}
    return [row[0] for row in session.connection().execute(_END_RUNNING, params)]


def expire_leases(session: Session, stale_before: datetime, now: datetime) -> int:
    """Leases whose heartbeats stopped: released. Returns how many. Selects first: on SQLite even an UPDATE
    that matches nothing takes the write lock, and this runs several times a second."""
    stale = session.scalars(
        select(Lease.id).where(Lease.released_at.is_(None), Lease.heartbeat_at < stale_before)
    ).all()
    if stale:
        session.execute(update(Lease).where(Lease.id.in_(stale)).values(released_at=now))
    return len(stale)


# What the reconciler asks several times a second: does `reap` have anything to do? Read without the
# write lock, so an idle tick never makes a build's own writes wait. Built once, Core.
_STALE_LEASE = select(_LEASES.c.id).where(
    _LEASES.c.released_at.is_(None), _LEASES.c.heartbeat_at < bindparam("stale_before")
)
# A running build nobody holds: none of its leases, released or not, had a heartbeat since stale_before (its
# unreleased ones are all stale, and `reap` releases them with it).
_ABANDONED_BUILD = select(_BUILDS.c.id).where(
    _BUILDS.c.status == BuildStatus.RUNNING,
    _BUILDS.c.created_at < bindparam("stale_before"),
    ~select(_LEASES.c.id)
    .where(_LEASES.c.build_id == _BUILDS.c.id, _LEASES.c.heartbeat_at >= bindparam("stale_before"))
    .exists(),
)
_RAN_TOO_LONG = select(_BUILDS.c.id).where(
    _BUILDS.c.status == BuildStatus.RUNNING, _BUILDS.c.created_at < bindparam("started_before")
)
_REAPING_DUE = select(or_(_STALE_LEASE.exists(), _ABANDONED_BUILD.exists()))
_REAPING_DUE_WITH_TIMEOUT = select(
    or_(_STALE_LEASE.exists(), _ABANDONED_BUILD.exists(), _RAN_TOO_LONG.exists())
)


def reaping_due(
    connection: Connection | Session, stale_before: datetime, started_before: datetime | None
) -> bool:
    """Whether a lease's heartbeats stopped before stale_before, a running build holds no live lease since
    then, or (with started_before) a build still runs that started before it: what `reap` would change."""
    if started_before is None:
        return bool(connection.execute(_REAPING_DUE, {"stale_before": stale_before}).scalar())
    params = {"stale_before": stale_before, "started_before": started_before}
    return bool(connection.execute(_REAPING_DUE_WITH_TIMEOUT, params).scalar())


# The builder reconciler reads it five times a second: built once, run on a bare connection.
_ACTIVE_LEASES = (
    select(_LEASES.c.project_id, _LEASES.c.platform, _LEASES.c.build_id)
    .join(_BUILDS, _BUILDS.c.id == _LEASES.c.build_id)
    .where(_LEASES.c.released_at.is_(None), _BUILDS.c.status == BuildStatus.RUNNING)
)


def active_leases(connection: Connection | Session) -> Sequence[Row[str, str, str]]:
    """(project, platform, build) of every unreleased lease of a running build."""
    return connection.execute(_ACTIVE_LEASES).all()


_RUNNING_SINCE_BEFORE = (
    select(_BUILDS.c.id)
    .where(_BUILDS.c.status == BuildStatus.RUNNING, _BUILDS.c.created_at < bindparam("before"))
    .order_by(_BUILDS.c.created_at)
    .limit(bindparam("limit"))
)
_ABANDONED_OLDEST_FIRST = _ABANDONED_BUILD.order_by(_BUILDS.c.created_at).limit(bindparam("limit"))
_RUNNING_WITH_LEASES = select(_BUILDS.c.id).where(
    _BUILDS.c.status == BuildStatus.RUNNING,
    select(_LEASES.c.id)
    .where(
        _LEASES.c.build_id == _BUILDS.c.id,
        _LEASES.c.released_at.is_(None),
        _LEASES.c.acquired_at < bindparam("acquired_before"),
    )
    .exists(),
)


def running_since_before(session: Session, before: datetime, limit: int) -> list[str]:
    """The oldest running builds created before `before`, at most limit of them."""
    params = {"before": before, "limit": limit}
    return list(session.connection().scalars(_RUNNING_SINCE_BEFORE, params))


def running_with_leases(session: Session, acquired_before: datetime) -> list[str]:
    """Running builds that hold an unreleased lease on a builder, taken before `acquired_before`."""
    return list(session.connection().scalars(_RUNNING_WITH_LEASES, {"acquired_before": acquired_before}))


def abandoned_builds(session: Session, stale_before: datetime, limit: int) -> list[str]:
    """Running builds created before stale_before that nobody held since (see _ABANDONED_BUILD), the oldest
    first, at most limit of them."""
    params = {"stale_before": stale_before, "limit": limit}
    return list(session.connection().scalars(_ABANDONED_OLDEST_FIRST, params))


# The gateway's admission of every new connection: built once, Core, one row.
_LIVE_LEASE_HARDWARE = (
    select(_LEASES.c.hardware)
    .join(_BUILDS, _BUILDS.c.id == _LEASES.c.build_id)
    .where(
        _LEASES.c.build_id == bindparam("build_id"),
        _LEASES.c.platform == bindparam("platform"),
        _LEASES.c.project_id == bindparam("project_id"),
        _LEASES.c.released_at.is_(None),
        _BUILDS.c.status == BuildStatus.RUNNING,
    )
)


def live_lease_hardware(
    connection: Connection | Session, project_id: str, build_id: str, platform: str
) -> str | None:
    """The hardware of the build's live lease on platform in project, or None when it holds none (not
    taken, released, or the build no longer running)."""
    params = {"project_id": project_id, "build_id": build_id, "platform": platform}
    row = connection.execute(_LIVE_LEASE_HARDWARE, params).first()
    return None if row is None else str(row[0])


def live_among(session: Session, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (build, platform) pairs still hold a live lease (as `live_lease_hardware`)."""
    if not keys:
        return set()
    stmt = (
        select(Lease.build_id, Lease.platform)
        .join(Build, Build.id == Lease.build_id)
        .where(
            Lease.build_id.in_({build for build, _platform in keys}),
            Lease.released_at.is_(None),
            Build.status == BuildStatus.RUNNING,
        )
    )
    return {(row.build_id, row.platform) for row in session.execute(stmt)} & keys


def insert_build(session: Session, build: Build) -> None:
    """A new build, written at once with a Core INSERT (CreateBuild's path: the session's unit of work
    costs more than the statement). The object stays outside the session."""
    values = {column.key: getattr(build, column.key) for column in _BUILDS.columns}
    session.connection().execute(_BUILDS.insert(), values)


def insert_lease(session: Session, lease: Lease) -> bool:
    """A new lease, written at once with a Core INSERT (GetBuildKitConnection's path, like insert_build).
    False if another connection of the build inserted its lease on that platform first (the CLI connects
    several at once): then that one is renewed instead, where a unique violation was an internal error."""
    values = {column.key: getattr(lease, column.key) for column in _LEASES.columns}
    return bool(insert_ignore_many_returning(session, Lease, [values], ("build_id", "platform"), "id"))


class StatusTarget(NamedTuple):
    organization_id: str
    project_id: str
    status_bytes: int
    finished_at: datetime | None


# The CLI's status stream writes once per message, and its stream ends just as the CLI's solve starts (on
# its path, as far as the server's log shows): plain Core statements built once, the build's row (options and
# all) never loaded.
_STATUS_TARGET = _reaching(_BUILDS.c.status_bytes, _BUILDS.c.finished_at).with_for_update()
_ADD_STATUS_BYTES = (
    update(_BUILDS)
    .where(_BUILDS.c.id == bindparam("build_id"))
    .values(status_bytes=_BUILDS.c.status_bytes + bindparam("added"))
)
_INSERT_STATUS_REPORT = insert(cast(Table, StatusReport.__table__))
_ADD_STEPS_BYTES = (
    update(_BUILDS)
    .where(_BUILDS.c.id == bindparam("build_id"))
    .values(steps_bytes=_BUILDS.c.steps_bytes + bindparam("added"))
)


def status_target(session: Session, build_id: str) -> StatusTarget | None:
    """Who reaches the build and its running total of status bytes, its row locked until commit
    (PostgreSQL; on SQLite the store's write lock already runs one writer at a time)."""
    row = session.connection().execute(_STATUS_TARGET, {"build_id": build_id}).first()
    return None if row is None else StatusTarget(row[0], row[1], int(row[2] or 0), row[3])


def add_status_reports(session: Session, build_id: str, received_at: datetime, payloads: list[bytes]) -> None:
    """The payloads as received, in order, and the build's running total of status bytes."""
    if not payloads:
        return
    connection = session.connection()
    rows = [{"build_id": build_id, "received_at": received_at, "payload": p} for p in payloads]
    connection.execute(_INSERT_STATUS_REPORT, rows)
    connection.execute(_ADD_STATUS_BYTES, {"build_id": build_id, "added": sum(map(len, payloads))})


def status_reports(session: Session, build_id: str) -> Sequence[StatusReport]:
    stmt = select(StatusReport).where(StatusReport.build_id == build_id).order_by(StatusReport.id)
    return session.scalars(stmt).all()


def steps_page(
    session: Session, build_id: str, *, limit: int, after: tuple[datetime, int] | None
) -> Sequence[Step]:
    stmt = select(Step).where(Step.build_id == build_id)
    if after is not None:
        stmt = stmt.where(tuple_(Step.started_at, Step.id) > tuple_(*after))
    return session.scalars(stmt.order_by(Step.started_at, Step.id).limit(limit)).all()


def step_count(session: Session, build_id: str) -> int:
    return int(session.connection().scalar(_STEP_COUNT, {"build_id": build_id}) or 0)


def step(session: Session, build_id: str, digest: str) -> Step | None:
    return session.scalars(select(Step).where(Step.build_id == build_id, Step.digest == digest)).first()


# Past this many digests the build's steps are read whole instead of naming each digest: a status message can
# name 70,000 vertices, and PostgreSQL takes at most 65,535 bound parameters (an internal error before). A
# build has at most steps.MAX_STEPS steps, so reading them all is bounded.
MANY_DIGESTS = 1000

# The step recorder's statements, as plain Core rows: it writes a build's steps when its solve ends, which is
# when the CLI sends FinishBuild, and that waits for the write. Through the ORM the same write took ~2 ms of
# CPU for a dozen steps (the build's row with its options, identity map, unit of work, each step read back
# after its INSERT and then UPDATEd).
# Locked (PostgreSQL) as every writer of a build's steps and logs locks it first: the recorder's read of the
# log volume and the step count, then its write, raced a status stream's and lost its bytes (the log cap and
# the history quota then counted less than was kept).
_BUILD_PROJECT = select(Build.project_id).where(Build.id == bindparam("build_id")).with_for_update()
_STEP_COUNT = select(func.count()).select_from(Step).where(Step.build_id == bindparam("build_id"))
_STEPS = cast(Table, Step.__table__)
# What merging status updates into a step may change (steps.apply).
MERGED_STEP_COLUMNS = (
    "name",
    "started_at",
    "started_known",
    "completed_at",
    "cached",
    "error",
    "has_logs",
    "saved_seconds",
)
_UPDATE_STEP = (
    update(_STEPS)
    .where(_STEPS.c.id == bindparam("step_id"))
    .values({column: bindparam(column) for column in MERGED_STEP_COLUMNS})
)


def build_project_id(session: Session, build_id: str) -> str | None:
    """The build's project, or None once the build is deleted; its row is not loaded (options and all)."""
    return cast(str | None, session.connection().scalar(_BUILD_PROJECT, {"build_id": build_id}))


def step_states(session: Session, build_id: str, digests: Sequence[str]) -> dict[str, Any]:
    """The build's existing steps among digests (rows of STEP_STATE's columns), in one query."""
    if not digests:
        return {}
    connection = session.connection()
    if len(digests) > MANY_DIGESTS:
        wanted = set(digests)
        every = connection.execute(_STEP_STATES, {"build_id": build_id})
        return {row.digest: row for row in every if row.digest in wanted}
    named = connection.execute(_STEP_STATES_NAMED, {"build_id": build_id, "digests": list(digests)})
    return {row.digest: row for row in named}


def insert_steps(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Inserts the steps (whole rows) unless another transaction inserted one first: the digests inserted."""
    return set(insert_ignore_many_returning(session, Step, rows, ("build_id", "digest"), "digest"))


def add_steps_bytes(session: Session, build_id: str, added: int) -> None:
    """The build's running total of what its step rows hold (the history quota counts it)."""
    if added:
        session.connection().execute(_ADD_STEPS_BYTES, {"build_id": build_id, "added": added})


def update_steps(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Writes each step's merged state, by id (`step_id`), in one execution."""
    if rows:
        session.connection().execute(_UPDATE_STEP, list(rows))


def log_volume(session: Session, build_id: str) -> LogVolume | None:
    return session.get(LogVolume, build_id)


def insert_log_lines(session: Session, rows: Sequence[dict[str, object]]) -> None:
    """Log lines in order (their ids give the order), as plain rows: no ORM object per line."""
    if rows:
        session.execute(insert(LogLine), rows)


def add_log_volume(session: Session, build_id: str) -> LogVolume:
    """The build's log byte count, created at zero unless a concurrent writer created it first."""
    values = {"build_id": build_id, "bytes": 0, "truncated": False}
    insert_ignore(session, LogVolume, values, ("build_id",))
    volume = session.get(LogVolume, build_id)
    assert volume is not None
    return volume


def log_page(session: Session, build_id: str, digest: str, *, limit: int, after_id: int) -> Sequence[LogLine]:
    stmt = (
        select(LogLine)
        .where(LogLine.build_id == build_id, LogLine.digest == digest, LogLine.id > after_id)
        .order_by(LogLine.id)
        .limit(limit)
    )
    return session.scalars(stmt).all()


_ERROR_CONTAINING: dict[str, Any] = {}


def step_error_containing(session: Session, build_id: str, text: str) -> str | None:
    stmt = _ERROR_CONTAINING.get(text)
    if stmt is None:  # one statement per text (the callers pass constants), built once
        stmt = _ERROR_CONTAINING[text] = (
            select(Step.error)
            .where(Step.build_id == bindparam("step_build"), Step.error.contains(text, autoescape=True))
            .limit(1)
        )
    return session.scalars(stmt, {"step_build": build_id}).first()


def step_counts(session: Session, build_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """build -> (cached steps, total steps)."""
    stmt = (
        select(Step.build_id, func.sum(case((Step.cached, 1), else_=0)), func.count())
        .where(Step.build_id.in_(build_ids))
        .group_by(Step.build_id)
    )
    return {b: (int(c or 0), int(t)) for b, c, t in session.execute(stmt)}


def saved_seconds(session: Session, build: Build) -> float:
    """What this build's cache hits saved: the sum metered on its cached steps (see steps.apply)."""
    stmt = select(func.coalesce(func.sum(Step.saved_seconds), 0.0)).where(Step.build_id == build.id)
    return float(session.scalar(stmt) or 0.0)


# A step's last real run: one index seek (ix_build_steps_real_runs) past the project's cached runs of it.
# Built once: constructing a statement costs more than this seek.
_LAST_REAL_RUN = (
    select(Step.started_at, Step.completed_at)
    .where(
        Step.project_id == bindparam("project_id"),
        Step.name == bindparam("name"),
        Step.cached == false(),
        Step.build_id != bindparam("build_id"),
        Step.started_known.is_(True),
        Step.completed_at.is_not(None),
    )
    .order_by(Step.started_at.desc(), Step.id.desc())
    .limit(1)
)


def last_real_runs(
    session: Session, project_id: str, names: Collection[str], build_id: str
) -> dict[str, tuple[datetime, datetime]]:
    """step name -> (started, completed) of the latest run of a step of that name in the project, outside
    build_id, that executed (was not cached). One seek per name: a window over every run of those names
    grew with the project's rebuilds (66 ms for 5,000 rebuilds of 18 steps), inside the step recorder's
    write, which every build's FinishBuild waits for."""
    found: dict[str, tuple[datetime, datetime]] = {}
    for name in sorted(names):
        params = {"project_id": project_id, "name": name, "build_id": build_id}
        row = session.connection().execute(_LAST_REAL_RUN, params).first()
        if row is not None and row[0] is not None and row[1] is not None:  # both known, by the query
            found[name] = (row[0], row[1])
    return found


def shared_build(session: Session, share_hash: str) -> Build | None:
    return session.scalars(select(Build).where(Build.share_hash == share_hash)).first()


def running_count(session: Session) -> int:
    running = select(func.count()).select_from(Build).where(Build.status == BuildStatus.RUNNING)
    return int(session.scalar(running) or 0)


def all_steps(session: Session, build_id: str, limit: int) -> Sequence[Step]:
    stmt = select(Step).where(Step.build_id == build_id).order_by(Step.started_at, Step.id).limit(limit)
    return session.scalars(stmt).all()


_STEP_COLUMNS = (
    Step.id,
    Step.digest,
    Step.name,
    Step.started_at,
    Step.started_known,
    Step.completed_at,
    Step.cached,
    Step.error,
    Step.has_logs,
)
# What steps.apply merges into: a step view's columns and what its cache hit saved.
STEP_STATE = (*_STEP_COLUMNS, Step.saved_seconds)
_STEP_STATES = select(*STEP_STATE).where(Step.build_id == bindparam("build_id"))
_STEP_STATES_NAMED = _STEP_STATES.where(Step.digest.in_(bindparam("digests", expanding=True)))


def step_records(session: Session, build_id: str, limit: int) -> list[tuple[Any, ...]]:
    """The columns a step view shows, without ORM objects (a build may have thousands of steps)."""
    stmt = select(*_STEP_COLUMNS).where(Step.build_id == build_id).order_by(Step.started_at, Step.id)
    return [tuple(row) for row in session.execute(stmt.limit(limit))]


def step_by_id(session: Session, build_id: str, step_id: int) -> Step | None:
    return session.scalars(select(Step).where(Step.build_id == build_id, Step.id == step_id)).first()


def log_cursor(session: Session, build_id: str) -> int:
    """The id of the build's last log line so far (0 when none): where a live view starts following."""
    return int(session.scalar(select(func.max(LogLine.id)).where(LogLine.build_id == build_id)) or 0)


def log_window(
    session: Session, build_id: str, digest: str, *, after_id: int, until_id: int | None, limit: int
) -> Sequence[Row[int, str]]:
    """(id, text) of a step's lines after after_id, up to until_id when given, in order."""
    stmt = select(LogLine.id, LogLine.text).where(
        LogLine.build_id == build_id, LogLine.digest == digest, LogLine.id > after_id
    )
    if until_id is not None:
        stmt = stmt.where(LogLine.id <= until_id)
    return session.execute(stmt.order_by(LogLine.id).limit(limit)).all()


def log_since(session: Session, build_id: str, after_id: int, limit: int) -> Sequence[Row[int, str, str]]:
    """(id, digest, text) of every line of the build after after_id, in arrival order."""
    stmt = (
        select(LogLine.id, LogLine.digest, LogLine.text)
        .where(LogLine.build_id == build_id, LogLine.id > after_id)
        .order_by(LogLine.id)
        .limit(limit)
    )
    return session.execute(stmt).all()


def search_log(session: Session, build_id: str, needle: str, limit: int) -> Sequence[Row[int, str, int, str]]:
    """(id, digest, line number in its step, text) of the build's lines that contain needle
    (case-insensitive), in order. The numbers come from the same scan: counting each hit's predecessors
    apart was quadratic (500 hits at the end of a 2-million-line step: 74 s)."""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    numbered = (
        select(
            LogLine.id,
            LogLine.digest,
            func.row_number().over(partition_by=LogLine.digest, order_by=LogLine.id).label("number"),
            LogLine.text,
        )
        .where(LogLine.build_id == build_id)
        .subquery()
    )
    stmt = (
        select(numbered.c.id, numbered.c.digest, numbered.c.number, numbered.c.text)
        .where(func.lower(numbered.c.text).like(f"%{escaped.lower()}%", escape="\\"))
        .order_by(numbered.c.id)
        .limit(limit)
    )
    return cast("Sequence[Row[int, str, int, str]]", session.execute(stmt).all())


def latest_builds(session: Session, project_ids: Sequence[str]) -> dict[str, Build]:
    """project -> its newest build."""
    newest = (
        select(Build.project_id, func.max(Build.created_at).label("at"))
        .where(Build.project_id.in_(project_ids))
        .group_by(Build.project_id)
        .subquery()
    )
    stmt = select(Build).join(
        newest, and_(Build.project_id == newest.c.project_id, Build.created_at == newest.c.at)
    )
    return {b.project_id: b for b in session.scalars(stmt)}


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Build.status, func.count()).group_by(Build.status))
    return {status: count for status, count in rows}


def finished_before(session: Session, before: datetime, limit: int) -> list[str]:
    """Ids of the builds that finished before `before`, the oldest first, at most limit of them."""
    stmt = (
        select(_BUILDS.c.id)
        .where(_BUILDS.c.finished_at < before)
        .order_by(_BUILDS.c.finished_at, _BUILDS.c.id)
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())


def delete_kept_in_bulk(session: Session, build_ids: Sequence[str], limit: int) -> int:
    """Deletes at most `limit` of the rows these builds kept in bulk (log lines, status reports, steps);
    returns how many went. Fewer than limit: none of theirs is left."""
    deleted = 0
    for table in _KEPT_IN_BULK:
        if deleted >= limit:
            break
        some = select(table.c.id).where(table.c.build_id.in_(build_ids)).limit(limit - deleted)
        result = session.execute(delete(table).where(table.c.id.in_(some)))
        deleted += cast(Any, result).rowcount
    return deleted


def delete_builds(session: Session, build_ids: Sequence[str]) -> int:
    """Deletes the builds; what else they own (leases, build tokens, log volume) goes by its foreign key."""
    result = session.execute(delete(_BUILDS).where(_BUILDS.c.id.in_(build_ids)))
    return int(cast(Any, result).rowcount)


def _kept_bytes() -> Any:
    """What one build keeps, by its own counts: log lines (as its log limit counts them), status reports,
    options and steps. (Options and steps were left out: 60 builds a minute of 255 KiB options each, or of
    2,000 steps with long names, grew the store without the quota seeing any of it.)"""
    return (
        func.coalesce(_VOLUMES.c.bytes, 0)
        + _BUILDS.c.status_bytes
        + _BUILDS.c.options_bytes
        + _BUILDS.c.steps_bytes
    )


def organizations_keeping_over(session: Session, quota_bytes: int) -> list[tuple[str, int]]:
    """(organization, bytes kept) for each organization whose builds keep more than quota_bytes."""
    kept = func.sum(_kept_bytes())
    stmt = (
        select(_BUILDS.c.organization_id, kept)
        .select_from(_BUILDS.outerjoin(_VOLUMES, _VOLUMES.c.build_id == _BUILDS.c.id))
        .group_by(_BUILDS.c.organization_id)
        .having(kept > quota_bytes)
    )
    return [(organization, int(total)) for organization, total in session.execute(stmt)]


def oldest_finished_kept(session: Session, organization_id: str, limit: int) -> list[tuple[str, int]]:
    """(build, bytes it keeps) of the organization's finished builds, the oldest created first, leaving out
    its newest finished one; at most limit of them."""
    finished = (_BUILDS.c.organization_id == organization_id, _BUILDS.c.finished_at.is_not(None))
    newest = (
        select(_BUILDS.c.id)
        .where(*finished)
        .order_by(_BUILDS.c.created_at.desc(), _BUILDS.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    stmt = (
        select(_BUILDS.c.id, _kept_bytes())
        .select_from(_BUILDS.outerjoin(_VOLUMES, _VOLUMES.c.build_id == _BUILDS.c.id))
        .where(*finished, _BUILDS.c.id != newest)
        .order_by(_BUILDS.c.created_at, _BUILDS.c.id)
        .limit(limit)
    )
    return [(build_id, int(size)) for build_id, size in session.execute(stmt)]


def created_since(session: Session, organization_id: str, since: datetime, limit: int) -> int:
    """How many builds the organization created since `since`, counted up to limit (an index range of at most
    limit rows, however many there are)."""
    recent = (
        select(_BUILDS.c.id)
        .where(_BUILDS.c.organization_id == organization_id, _BUILDS.c.created_at >= since)
        .limit(limit)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(recent)) or 0)
