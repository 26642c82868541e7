"""Builds and their machine leases. Synchronous functions of a Session, one transaction per call."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.clock import as_utc, utcnow
from opendepot.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from opendepot.ids import new_id
from opendepot.organizations import queries as org_queries
from opendepot.pagination import Cursor, PageRequest, next_token
from opendepot.projects import queries as project_queries
from opendepot.projects import service as projects
from opendepot.tokens import service as tokens
from opendepot.tokens.secrets import hash_secret
from opendepot.validation import require_id

from . import queries, steps
from .models import Build, Lease, LogLine, Step
from .platform import Platform
from .status import CANCELED, ERROR, FAILED, FINISHED, RUNNING, SUCCESS

PLATFORMS = tuple(Platform)
BUILDS_LIST = "builds"
MAX_OPTIONS = 64
# Tags, build args, labels, outputs of every target, as stored with the build.
MAX_OPTIONS_BYTES = 256 * 1024
HEARTBEAT_GRANULARITY = timedelta(seconds=1)
# The window of --max-builds-per-minute.
MINUTE = timedelta(minutes=1)
MAX_STATUS_BYTES_PER_BUILD = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    error: str | None = None

    @classmethod
    def success(cls) -> Outcome:
        return cls(SUCCESS)

    @classmethod
    def failed(cls, error: str) -> Outcome:
        return cls(FAILED, error[:10_000] or "build failed")

    @classmethod
    def canceled(cls) -> Outcome:
        return cls(CANCELED)


def create_build(
    session: Session,
    principal: Principal,
    project_id: str | None,
    options: list[dict[str, Any]],
    per_minute: int = 0,
) -> tuple[Build, str]:
    """`not_found` for an empty or unknown project: the CLI then offers onboarding. A project token with no
    project id builds in its own project. With per_minute, an organization that created that many builds in
    the last minute gets `resource_exhausted` (--max-builds-per-minute)."""
    if len(options) > MAX_OPTIONS:
        raise InvalidArgument("options", f"at most {MAX_OPTIONS} targets per build")
    options_bytes = len(json.dumps(options, separators=(",", ":")))
    if options_bytes > MAX_OPTIONS_BYTES:
        raise ResourceExhausted(f"options: at most {MAX_OPTIONS_BYTES} bytes of build options per build")
    project_id, organization_id = buildable_project(session, principal, project_id)
    # The organization, then the project (the order an organization's deletion locks them in).
    if per_minute:
        org_queries.hold_for_build_count(session, organization_id)
    if not project_queries.hold_for_build(session, project_id):
        raise NotFound(f"project {project_id!r} not found")
    now = utcnow()
    if per_minute and queries.created_since(session, organization_id, now - MINUTE, per_minute) >= per_minute:
        raise ResourceExhausted(
            f"organization {organization_id} created {per_minute} builds in the last minute, the most it may "
            "(--max-builds-per-minute): try again shortly"
        )
    build = Build(
        id=new_id(),
        project_id=project_id,
        organization_id=organization_id,
        status=RUNNING,
        options=options,
        created_at=now,
        started_at=now,
        started_by=f"{principal.kind}:{principal.token_id}"[:200],
        share_hash=None,
        status_bytes=0,
        options_bytes=options_bytes,
        steps_bytes=0,
    )
    queries.insert_build(session, build)  # before the token, which refers to it
    secret = tokens.create_build_token(session, organization_id, project_id, build.id)
    return build, secret


def buildable_project(session: Session, principal: Principal, project_id: str | None) -> tuple[str, str]:
    """(project id, organization id) of the project this caller's new build would run in, or why it may
    not: a build token creates no builds, a project token with no project id builds in its own project, an
    empty or unknown project is `not_found` (the CLI then offers onboarding)."""
    if principal.kind is TokenKind.BUILD:
        raise PermissionDenied("a build token cannot create builds")
    if not project_id and principal.project_id:
        project_id = principal.project_id
    if not project_id:
        raise NotFound("no project given: pass --project, set DEPOT_PROJECT_ID or add a depot.json")
    owner = project_queries.owner(session, require_id("project_id", project_id))
    if owner is None:
        raise NotFound(f"project {project_id!r} not found")
    principal.require_project_access(owner[1], owner[0])
    return owner


class _Owned(Protocol):
    @property
    def organization_id(self) -> str: ...
    @property
    def project_id(self) -> str: ...


_Found = TypeVar("_Found", bound=_Owned)


def _reached(principal: Principal, build_id: str, found: _Found | None) -> _Found:
    """What was read of the build, once the principal is known to reach it: `not_found` when there is no
    such build, `permission_denied` when the caller's token does not reach it."""
    if found is None:
        raise NotFound(f"build {build_id!r} not found")
    principal.require_build_access(found.organization_id, found.project_id, build_id)
    return found


def load_build(session: Session, principal: Principal, build_id: str) -> Build:
    return _reached(principal, build_id, queries.get(session, require_id("build_id", build_id)))


def finish_build(session: Session, principal: Principal, build_id: str, outcome: Outcome | None) -> Outcome:
    """Sets the final status once (later calls change nothing) and releases the build's machines; answers
    the build's final status and error. A missing outcome is refused only after the caller is known to reach
    the build. Core statements, the build's row (options and all) never loaded: the CLI waits for this."""
    # Its row locked until commit.
    build = _reached(principal, build_id, queries.locked_result(session, require_id("build_id", build_id)))
    if outcome is None:
        raise InvalidArgument("result", "one of success, error or canceled is required")
    now = utcnow()
    final = Outcome(build.status, build.error)
    if build.status not in FINISHED:
        final = outcome
        # The row is locked before the steps are read: see steps.apply. A build that succeeded has no error
        # to add the line to: the search over its steps is skipped (most builds).
        if outcome.error is not None and (
            oom := queries.step_error_containing(session, build_id, steps.OUT_OF_MEMORY)
        ):
            final = Outcome(outcome.status, steps.with_out_of_memory_line(outcome.error, oom))
        queries.set_finished(session, build_id, final.status, final.error, now)
        tokens.expire_build_tokens(session, [build_id], now)
    queries.release_leases(session, build_id, now)
    return final


def check_platform(platform: str | None, supported: Sequence[str]) -> str:
    if platform not in PLATFORMS:
        raise InvalidArgument("platform", "must be amd64 or arm64")
    if platform not in supported:
        raise FailedPrecondition(
            f"this server cannot build for {platform}: its host runs {', '.join(supported)} natively and "
            f"has no QEMU binfmt handler for {platform}"
        )
    return platform


def acquire(
    session: Session,
    principal: Principal,
    build_id: str,
    platform: str,
    builder_running: Callable[[str], bool] = lambda _project_id: False,
) -> str:
    """Takes or renews the build's lease on its project's builder; returns the build's project. The build,
    its lease on this platform and its project's hardware come in one query: this is on every connection's
    path. builder_running(project): whether the builder is up, so the lease is served (billed) from now."""
    found = _reached(
        principal, build_id, queries.build_with_lease(session, require_id("build_id", build_id), platform)
    )
    if found.status in FINISHED:
        raise FailedPrecondition(f"build {build_id} is {found.status}; start a new build")
    now = utcnow()
    served = builder_running(found.project_id)
    lease_id = found.lease_id
    if lease_id is None:
        lease = Lease(
            id=new_id(),
            build_id=build_id,
            project_id=found.project_id,
            platform=platform,
            hardware=found.hardware or "16x32",
            acquired_at=now,
            heartbeat_at=now,
            released_at=None,
            served_at=now if served else None,
        )
        if queries.insert_lease(session, lease):
            return found.project_id
        # Another connection's insert won: read again (a new statement sees it) and renew that one.
        again = queries.build_with_lease(session, build_id, platform)
        lease_id = again.lease_id if again is not None else None
        if lease_id is None:
            raise FailedPrecondition(f"build {build_id} could not take its lease; try again")
    queries.renew_lease(session, lease_id, now, served)
    return found.project_id


def heartbeat(session: Session, principal: Principal, build_id: str, platform: str | None) -> None:
    """Renews the lease. The CLI keeps heart-beating after FinishBuild: that is answered, and ignored."""
    now = utcnow()
    queries.renew_heartbeats(session, _stale_leases(session, principal, build_id, platform, now), now)


def heartbeat_due(session: Session, principal: Principal, build_id: str, platform: str | None) -> bool:
    """Whether a heartbeat would renew anything (read-only; the caller's access is checked). The CLI's
    first one comes as its GetBuildKitConnection takes the lease: answered from a read, it does not take
    SQLite's write lock from under that call."""
    return bool(_stale_leases(session, principal, build_id, platform, utcnow()))


def _stale_leases(
    session: Session, principal: Principal, build_id: str, platform: str | None, now: datetime
) -> list[str]:
    """The ids of the build's live leases on the platform (or all) last renewed over HEARTBEAT_GRANULARITY
    ago: a renewal within it adds nothing and would only contend for the write lock. One Core query: the
    CLI's first heartbeat comes beside its GetBuildKitConnection."""
    rows = queries.build_live_leases(session, require_id("build_id", build_id))
    if _reached(principal, build_id, rows[0] if rows else None).status in FINISHED:
        return []
    return [
        row.lease_id
        for row in rows
        if row.lease_id is not None
        and (platform is None or row.platform == platform)
        and row.heartbeat_at is not None
        and now - row.heartbeat_at > HEARTBEAT_GRANULARITY
    ]


def release(session: Session, principal: Principal, build_id: str, platform: str) -> None:
    build = load_build(session, principal, build_id)
    queries.release_leases(session, build.id, utcnow(), platform)


def record_status(
    session: Session,
    principal: Principal,
    build_id: str,
    payloads: list[bytes],
    vertices: Sequence[steps.VertexUpdate] = (),
    logs: Sequence[steps.LogChunk] = (),
    log_cap: int = steps.DEFAULT_LOG_CAP,
) -> bool:
    """Keeps what the client reported (bounded per build) and merges its vertices (`[depot] …`) into the
    build's steps. Returns False once the bound is reached."""
    build = _reached(principal, build_id, queries.status_target(session, require_id("build_id", build_id)))
    if build.finished_at is not None and utcnow() - as_utc(build.finished_at) > STATUS_AFTER_FINISH:
        return True  # its record is final: a late stream changes nothing (it renamed and re-cached steps)
    steps.apply(session, build_id, vertices, logs, log_cap, project_id=build.project_id)
    kept: list[bytes] = []
    room = MAX_STATUS_BYTES_PER_BUILD - build.status_bytes
    for payload in payloads:
        if len(payload) > room:
            break
        kept.append(payload)
        room -= len(payload)
    queries.add_status_reports(session, build_id, utcnow(), kept)
    return len(kept) == len(payloads)


STEPS_LIST, LOGS_LIST = "steps", "logs"
# What a build's status stream may still report once the build finished (the stream and FinishBuild race).
STATUS_AFTER_FINISH = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Summary:
    build: Build
    cached_steps: int
    total_steps: int
    saved_seconds: float


def _build_in_project(session: Session, principal: Principal, project_id: str, build_id: str) -> Build:
    build = load_build(session, principal, build_id)
    if project_id and build.project_id != project_id:
        raise NotFound(f"build {build_id!r} not found in project {project_id!r}")
    return build


def list_steps(
    session: Session, principal: Principal, project_id: str, build_id: str, page: PageRequest
) -> tuple[Sequence[Step], str | None]:
    build = _build_in_project(session, principal, project_id, build_id)
    after = (page.after.created_at, page.after.numeric_id()) if page.after is not None else None
    rows = queries.steps_page(session, build.id, limit=page.size + 1, after=after)
    cursors = [Cursor(r.started_at or build.created_at, str(r.id)) for r in rows]
    return rows[: page.size], next_token(STEPS_LIST, cursors, page.size)


def step_logs(
    session: Session, principal: Principal, project_id: str, build_id: str, digest: str, page: PageRequest
) -> tuple[Sequence[LogLine], str | None]:
    build = _build_in_project(session, principal, project_id, build_id)
    if not digest or len(digest) > 200:
        raise InvalidArgument("build_step_digest", "is required (a vertex digest from GetBuildSteps)")
    if queries.step(session, build.id, digest) is None:
        raise NotFound(f"build {build.id} has no step {digest!r}")
    after = page.after.numeric_id() if page.after is not None else 0
    rows = queries.log_page(session, build.id, digest, limit=page.size + 1, after_id=after)
    cursors = [Cursor(r.logged_at, str(r.id)) for r in rows]
    return rows[: page.size], next_token(LOGS_LIST, cursors, page.size)


def summarize(session: Session, builds: Sequence[Build]) -> list[Summary]:
    counts = queries.step_counts(session, [b.id for b in builds])
    return [
        Summary(b, *counts.get(b.id, (0, 0)), saved_seconds=queries.saved_seconds(session, b)) for b in builds
    ]


def list_builds(
    session: Session, principal: Principal, project_id: str, page: PageRequest
) -> tuple[Sequence[Build], str | None]:
    project = projects.load_project(session, principal, project_id)
    rows = queries.newest_first(session, project.id, limit=page.size + 1, after=page.after)
    token = next_token(BUILDS_LIST, [Cursor(b.created_at, b.id) for b in rows], page.size)
    return rows[: page.size], token


def reaping_due(
    connection: Connection | Session,
    lease_timeout: timedelta,
    now: datetime | None = None,
    build_timeout: timedelta | None = None,
) -> bool:
    """Whether `reap` with the same settings would change anything (a read: no write lock)."""
    now = now or utcnow()
    started_before = now - build_timeout if build_timeout is not None else None
    return queries.reaping_due(connection, now - lease_timeout, started_before)


# Builds ended per reap, each kind: one transaction holds the store's write lock while it runs. A project
# token can leave any number of builds unconnected; 20,000 abandoned at once held the lock for 4.3 s.
REAP_BATCH = 500


def reap(
    session: Session,
    lease_timeout: timedelta,
    now: datetime | None = None,
    build_timeout: timedelta | None = None,
) -> tuple[int, int]:
    """Releases leases without heartbeats and ends builds that nobody holds, and (with build_timeout) builds
    that ran too long: those end with a reason and give their builder up. Returns (leases, builds). At most
    REAP_BATCH builds of each kind per call, the oldest first: `reaping_due` stays true for the next tick."""
    now = now or utcnow()
    timed_out: list[str] = []
    if build_timeout is not None:
        timed_out = queries.end_running(
            session,
            queries.running_since_before(session, now - build_timeout, REAP_BATCH),
            ERROR,
            f"timed out: ran longer than {int(build_timeout.total_seconds())} s (--build-timeout)",
            now,
        )
    stale_before = now - lease_timeout
    abandoned = queries.end_running(
        session,
        queries.abandoned_builds(session, stale_before, REAP_BATCH),
        ERROR,
        f"abandoned: no heartbeat for {int(lease_timeout.total_seconds())} s",
        now,
    )
    # The builds first, then leases: every writer locks rows in that order (PostgreSQL), so a FinishBuild
    # that holds a build this ends, and waits for its leases, cannot wait for this as this waits for it.
    queries.release_leases_of(session, timed_out, now)
    expired = queries.release_leases_of(session, abandoned, now)  # all stale
    tokens.expire_build_tokens(session, timed_out + abandoned, now)
    return expired + queries.expire_leases(session, stale_before, now), len(abandoned)


# The retention sweep works in slices, each one transaction holding the store's write lock: at most
# PRUNE_BUILDS builds, and at most PRUNE_ROWS of the rows they kept in bulk (a build may keep 163,840 log
# lines at the default log limit, and 2,001 steps).
PRUNE_BUILDS = 50
PRUNE_ROWS = 20_000


def prune_slice(session: Session, retention: timedelta, now: datetime | None = None) -> tuple[int, int]:
    """One slice of the retention sweep (--build-retention-days): deletes what the builds that finished more
    than `retention` ago kept, the oldest builds first, then, once nothing of theirs is left, the builds.
    Returns (builds, rows) deleted; (0, 0) once nothing is left to prune. Running builds are never pruned."""
    now = now or utcnow()
    expired = queries.finished_before(session, now - retention, PRUNE_BUILDS)
    if not expired:
        return 0, 0
    rows = queries.delete_kept_in_bulk(session, expired, PRUNE_ROWS)
    if rows >= PRUNE_ROWS:
        return 0, rows
    return queries.delete_builds(session, expired), rows


def over_history_quota(session: Session, quota_bytes: int) -> list[tuple[str, int]]:
    """(organization, bytes over) for each organization whose builds keep more than quota_bytes of logs and
    status reports (--build-history-quota-mib)."""
    return [
        (org, kept - quota_bytes) for org, kept in queries.organizations_keeping_over(session, quota_bytes)
    ]


def prune_history_slice(session: Session, organization_id: str, excess: int) -> tuple[int, int, int]:
    """One slice of bringing an organization back under its history quota: deletes what its oldest finished
    builds kept, as many of them as cover `excess` bytes (at most PRUNE_BUILDS), then, once nothing of
    theirs is left, the builds. Its newest finished build and running builds are never deleted. Returns
    (builds, rows, bytes) deleted; (0, 0, 0) once nothing is left that may go."""
    chosen: list[str] = []
    freed = 0
    for build_id, size in queries.oldest_finished_kept(session, organization_id, PRUNE_BUILDS):
        if freed >= excess:
            break
        chosen.append(build_id)
        freed += size
    if not chosen:
        return 0, 0, 0
    rows = queries.delete_kept_in_bulk(session, chosen, PRUNE_ROWS)
    if rows >= PRUNE_ROWS:
        return 0, rows, 0
    return queries.delete_builds(session, chosen), rows, freed


INTERRUPTED = "interrupted: the server restarted while this build ran on its builder; run it again"


def interrupt_building(session: Session, node_started: datetime, now: datetime | None = None) -> int:
    """At take-over: a build that held a builder lost it with the previous holder (its builders are reaped),
    so it cannot finish; it ends now, with a reason, rather than at the lease timeout. Only leases taken
    before this node started count: a build that arrived while this node waited for the duties (up to one
    singular-lease term after a restart) never had a builder of the previous holder and goes on."""
    now = now or utcnow()
    running = queries.running_with_leases(session, node_started)
    interrupted = 0
    # In slices: a statement binds each id, and PostgreSQL takes at most 65,535 parameters.
    for start in range(0, len(running), REAP_BATCH):
        ended = queries.end_running(session, running[start : start + REAP_BATCH], ERROR, INTERRUPTED, now)
        queries.release_leases_of(session, ended, now)
        tokens.expire_build_tokens(session, ended, now)
        interrupted += len(ended)
    return interrupted


__all__ = ["CANCELED", "ERROR", "FAILED", "Outcome"]


def share_build(session: Session, principal: Principal, build_id: str) -> str:
    """A new read-only link secret for the build; any earlier link stops working. Only its hash is kept."""
    build = load_build(session, principal, build_id)
    secret = secrets.token_urlsafe(24)
    build.share_hash = hash_secret(secret)
    return secret


def stop_sharing(session: Session, principal: Principal, build_id: str) -> None:
    load_build(session, principal, build_id).share_hash = None


def shared(session: Session, secret: str) -> tuple[Build, Sequence[Step]] | None:
    """The build behind a share link, with its steps; None for an unknown or revoked link."""
    if not secret or len(secret) > 100:
        return None
    build = queries.shared_build(session, hash_secret(secret))
    if build is None:
        return None
    return build, queries.steps_page(session, build.id, limit=10_000, after=None)


# Reads for the web dashboard: the same access rules as the RPCs above.
MAX_VIEW_STEPS = 10_000
MAX_LOG_WINDOW = 50_000
MAX_SEARCH_HITS = 500


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What a step view shows of a step."""

    id: int
    digest: str
    name: str
    started_at: datetime | None
    started_known: bool
    completed_at: datetime | None
    cached: bool
    error: str | None
    has_logs: bool


@dataclass(frozen=True, slots=True)
class BuildView:
    build: Build
    steps: Sequence[StepRecord]
    # While the build runs: the id of its last log line when this was read, where a live view follows on.
    log_cursor: int


@dataclass(frozen=True, slots=True)
class LogHit:
    step_id: int
    line_number: int
    text: str


def view_build(session: Session, principal: Principal, project_id: str, build_id: str) -> BuildView:
    build = _build_in_project(session, principal, project_id, require_id("build_id", build_id))
    return view_of(session, build)


def view_of(session: Session, build: Build) -> BuildView:
    cursor = queries.log_cursor(session, build.id) if build.finished_at is None else 0
    return BuildView(build, step_records(session, build), cursor)


def step_records(session: Session, build: Build) -> list[StepRecord]:
    return [StepRecord(*row) for row in queries.step_records(session, build.id, MAX_VIEW_STEPS)]


def list_builds_by_status(
    session: Session, principal: Principal, project_id: str, status: str | None, page: PageRequest
) -> tuple[list[Summary], str | None]:
    project = projects.load_project(session, principal, project_id)
    rows = queries.newest_first(
        session, project.id, limit=page.size + 1, after=page.after, status=status, with_options=True
    )  # the dashboard shows each build's platforms
    token = next_token(BUILDS_LIST, [Cursor(b.created_at, b.id) for b in rows], page.size)
    return summarize(session, rows[: page.size]), token


def step_log_window(
    session: Session, build: Build, step_id: int, after_id: int, until_id: int | None, limit: int
) -> tuple[Step, Sequence[tuple[int, str]]]:
    """A step's lines after after_id (and up to until_id), at most limit (<= MAX_LOG_WINDOW) of them."""
    if not 0 < limit <= MAX_LOG_WINDOW:
        raise InvalidArgument("limit", f"must be 1 to {MAX_LOG_WINDOW}")
    found = queries.step_by_id(session, build.id, step_id)
    if found is None:
        raise NotFound(f"build {build.id} has no step {step_id}")
    rows = queries.log_window(
        session, build.id, found.digest, after_id=after_id, until_id=until_id, limit=limit
    )
    return found, [(int(r[0]), str(r[1])) for r in rows]


def log_since(session: Session, build: Build, after_id: int, limit: int) -> Sequence[tuple[int, str, str]]:
    return [(int(r[0]), str(r[1]), str(r[2])) for r in queries.log_since(session, build.id, after_id, limit)]


def search_log(session: Session, build: Build, needle: str) -> list[LogHit]:
    """Lines of any step that contain needle, with the step and the line's number in it."""
    needle = needle.strip()
    if not needle or len(needle) > 200:
        raise InvalidArgument("q", "must be 1 to 200 characters")
    step_ids = {s.digest: s.id for s in queries.all_steps(session, build.id, MAX_VIEW_STEPS)}
    return [
        LogHit(step_ids.get(digest, 0), int(number), text)
        for _id, digest, number, text in queries.search_log(session, build.id, needle, MAX_SEARCH_HITS)
    ]


def shared_build(session: Session, secret: str) -> Build | None:
    if not secret or len(secret) > 100:
        return None
    return queries.shared_build(session, hash_secret(secret))


def latest_builds(session: Session, principal: Principal, project_ids: Sequence[str]) -> dict[str, Summary]:
    """project -> a summary of its newest build, for the projects this principal's organization owns."""
    found = queries.latest_builds(session, project_ids)
    visible = [b for b in found.values() if b.organization_id == principal.organization_id]
    return {s.build.project_id: s for s in summarize(session, visible)}
