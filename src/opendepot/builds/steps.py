"""Build steps and their logs, from BuildKit status updates (the gateway's tap and the CLI's own reports).

A vertex arrives many times (queued, started, completed); each update is merged into one step: the earliest
start, the latest completion, cached if any update says so, the last error. Log chunks are split into lines
(a line cut across two chunks becomes two lines). Each build keeps at most `cap` bytes of log, a line counting
as at least MIN_LINE_COST bytes; past that one marker line says so and the rest is dropped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from opendepot.clock import utcnow

from . import queries
from .models import LogVolume

DEFAULT_LOG_CAP = 10 * 1024 * 1024
TRUNCATED = "[opendepot] log truncated: this build printed more than {cap} bytes; the rest was not kept"
# Each line costs at least this much of the cap. Without it, a build could print 2 MiB of newlines and make
# 2 million rows: minutes of the recorder's time, gigabytes of its memory, a database ~400 times the bytes.
MIN_LINE_COST = 64
# Lines go to the store in batches of this many rows, so a flush's memory stays bounded.
LOG_INSERT_BATCH = 5000
OUT_OF_MEMORY = "out of memory:"


def out_of_memory_message(limit_bytes: int | None, hardware: str) -> str:
    """What a step killed for memory says, in its error, its log and the build's error."""
    if limit_bytes is None:
        limit = "memory limit"
    elif limit_bytes >= 1 << 30:
        limit = f"memory limit ({limit_bytes / (1 << 30):g} GiB, hardware {hardware})"
    else:
        limit = f"memory limit ({limit_bytes >> 20} MiB, capped by the operator; hardware {hardware})"
    return f"{OUT_OF_MEMORY} the builder's {limit} was reached; the step was killed"


# Bounds on what a status report (the gateway's tap or a build token's ReportStatus) can make the store keep:
# with the log cap, a build's rows stay under ~MAX_STEPS * (MAX_STEP_NAME + MAX_STEP_ERROR) + DEFAULT_LOG_CAP.
MAX_STEPS = 2000
MAX_STEP_NAME = 1024
MAX_STEP_ERROR = 4096
MAX_DIGEST = 200
# What a step row holds beside its text (ids, times, flags, its index entries), for the history quota.
STEP_ROW_BYTES = 96
STEPS_TRUNCATED_DIGEST = "opendepot:steps-truncated"
STEPS_TRUNCATED = "[opendepot] this build reported more than {cap} steps; the rest were not recorded"


@dataclass(frozen=True, slots=True)
class VertexUpdate:
    digest: str
    name: str
    started: datetime | None
    completed: datetime | None
    cached: bool
    error: str


@dataclass(frozen=True, slots=True)
class LogChunk:
    digest: str
    stream: int
    at: datetime | None
    data: bytes


def storable(text: str) -> str:
    """Text as a text column keeps it everywhere: PostgreSQL refuses a NUL character, which binary output
    in a log or a hostile vertex name can carry; it reads as U+FFFD, like bytes that are not UTF-8."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _storable_vertex(v: VertexUpdate) -> VertexUpdate:
    if "\x00" not in v.name and "\x00" not in v.error:
        return v
    return replace(v, name=storable(v.name), error=storable(v.error))


@dataclass(slots=True)
class _StepState:
    """One step as this transaction merges into it: read from its row (`id` set), or new (`id` None)."""

    digest: str
    name: str
    started_at: datetime | None
    started_known: bool
    completed_at: datetime | None
    cached: bool
    error: str | None
    has_logs: bool
    saved_seconds: float | None
    id: int | None = None
    read: tuple[object, ...] = ()  # the row's values as read: it is written back only if they changed
    read_bytes: int = 0  # stored_bytes as read: the total counts only what a write adds

    def stored_bytes(self) -> int:
        """What the row holds, as the history quota counts it: its text in UTF-8 and STEP_ROW_BYTES."""
        text = len(self.digest) + len(self.name.encode()) + len((self.error or "").encode())
        return STEP_ROW_BYTES + text

    @classmethod
    def of(cls, row: Any) -> _StepState:
        state = cls(
            row.digest,
            row.name,
            row.started_at,
            row.started_known,
            row.completed_at,
            row.cached,
            row.error,
            row.has_logs,
            row.saved_seconds,
            row.id,
        )
        state.read = state.values()
        state.read_bytes = state.stored_bytes()
        return state

    @classmethod
    def new(cls, digest: str, first_seen: datetime) -> _StepState:
        """Until BuildKit says when it started, a step starts when it was first seen (so that steps sort)."""
        return cls(digest, "", first_seen, False, None, False, None, False, None)

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, column) for column in queries.MERGED_STEP_COLUMNS)

    def merge(self, v: VertexUpdate) -> str:
        """One update: the earliest start, the latest completion, cached if any says so, the last error.
        Answers the update's error if it is an out-of-memory one that this step takes."""
        self.name = (v.name[:MAX_STEP_NAME] if v.name else "") or self.name
        if v.started is not None and (
            not self.started_known or self.started_at is None or v.started < self.started_at
        ):
            self.started_at, self.started_known = v.started, True
        if v.completed is not None:
            self.completed_at = v.completed
        self.cached = self.cached or v.cached
        # The client reports the same failure again, without the out-of-memory line the gateway added.
        if v.error and OUT_OF_MEMORY not in (self.error or ""):
            self.error = v.error[:MAX_STEP_ERROR]
            if OUT_OF_MEMORY in v.error:
                return v.error
        return ""

    def row(self, build_id: str, project_id: str) -> dict[str, Any]:
        """As a new row."""
        merged = zip(queries.MERGED_STEP_COLUMNS, self.values(), strict=True)
        return {"build_id": build_id, "project_id": project_id, "digest": self.digest, **dict(merged)}

    def update(self) -> dict[str, Any]:
        """As the parameters of queries.update_steps."""
        return {"step_id": self.id, **dict(zip(queries.MERGED_STEP_COLUMNS, self.values(), strict=True))}


def apply(
    session: Session,
    build_id: str,
    vertices: Sequence[VertexUpdate],
    logs: Sequence[LogChunk],
    cap: int = DEFAULT_LOG_CAP,
    *,
    project_id: str | None = None,
) -> None:
    """Reads everything first and writes last: on SQLite the first write takes the database's one write
    lock, which every other writer (a build's FinishBuild among them) then waits for until this commits.
    Plain rows, no ORM objects: the recorder runs this when a build's solve ends, as the CLI finishes.
    project_id: the build's, when the caller has read it in this transaction already."""
    if project_id is None:
        project_id = queries.build_project_id(session, build_id)
    if project_id is None:  # deleted meanwhile (its project, the retention, the history quota): none kept
        return
    vertices = [_storable_vertex(v) for v in vertices]
    digests = [v.digest for v in vertices] + [chunk.digest for chunk in logs]
    # BuildKit's digests are `sha256:<hex>`; one that could not be stored is not a step.
    reported = {d for d in digests if d and len(d) <= MAX_DIGEST and "\x00" not in d}
    # Every step these updates touch that exists already, in one query.
    steps = {
        d: _StepState.of(row) for d, row in queries.step_states(session, build_id, sorted(reported)).items()
    }
    room = MAX_STEPS - queries.step_count(session, build_id)
    new: list[str] = []

    def admit(digest: str) -> bool:
        """Whether an update for digest is kept: its step exists, or there is room for one more."""
        nonlocal room
        if digest not in reported:
            return False
        if digest in steps or digest in new:
            return True
        if room > 0:
            room -= 1
            new.append(digest)
            return True
        if room == 0:  # one marker step says that the rest was dropped
            new.append(STEPS_TRUNCATED_DIGEST)
            room -= 1
        return False

    vertices = [v for v in vertices if admit(v.digest)]
    logs = [chunk for chunk in logs if admit(chunk.digest)]
    savings = _earlier_runs(session, project_id, build_id, steps, vertices)
    volume = queries.log_volume(session, build_id) if logs else None

    first_seen = utcnow()
    for digest in new:
        steps[digest] = _StepState.new(digest, first_seen)
    if STEPS_TRUNCATED_DIGEST in new:
        steps[STEPS_TRUNCATED_DIGEST].name = STEPS_TRUNCATED.format(cap=MAX_STEPS)
    out_of_memory = ""
    for v in vertices:
        out_of_memory = steps[v.digest].merge(v) or out_of_memory
    # Writes from here on.
    if logs:
        for digest in _append_logs(session, build_id, logs, cap, volume):
            steps[digest].has_logs = True
    _meter(session, project_id, build_id, steps.values(), savings)
    inserted = queries.insert_steps(session, [steps[d].row(build_id, project_id) for d in new])
    if raced := [d for d in new if d not in inserted]:
        # Another writer of this build (the CLI's status stream, the recorder) added these steps after this
        # transaction read: merge into its rows. Only on PostgreSQL; SQLite's write lock runs one after the
        # other.
        _merge_into_rows(session, build_id, project_id, steps, raced, vertices, savings)
    changed = [s for s in steps.values() if s.id is not None and s.values() != s.read]
    queries.update_steps(session, [s.update() for s in changed])
    # The build's row is locked (build_project_id or the caller's status_target), so the sum does not race.
    added = sum(steps[d].stored_bytes() for d in inserted)
    added += sum(max(0, s.stored_bytes() - s.read_bytes) for s in changed)
    queries.add_steps_bytes(session, build_id, added)
    if out_of_memory:
        # A finished build's error gets the step's out-of-memory line (finish_build adds it if it comes
        # later). Read locked after this transaction's step writes: finish_build may have set the error
        # since, and one of the two must see the other's write (SQLite: the write lock is held by now).
        result = queries.locked_result(session, build_id)
        if result is not None and result.error is not None:
            error = with_out_of_memory_line(result.error, out_of_memory)
            if error != result.error:
                queries.set_error(session, build_id, error)


def _meter(
    session: Session,
    project_id: str,
    build_id: str,
    steps: Iterable[_StepState],
    savings: dict[str, float],
) -> None:
    """Meters what each new cache hit saved, once: the duration of the step's last real run in the project.
    Matched by name, since stock BuildKit gives a cached vertex another digest than the run it reuses."""
    unmetered = [s for s in steps if s.cached and s.saved_seconds is None and s.name]
    # Named by a concurrent writer: looked up now.
    savings |= _durations(session, project_id, build_id, {s.name for s in unmetered} - savings.keys())
    for step in unmetered:
        step.saved_seconds = savings[step.name]


def _merge_into_rows(
    session: Session,
    build_id: str,
    project_id: str,
    steps: dict[str, _StepState],
    digests: list[str],
    vertices: Sequence[VertexUpdate],
    savings: dict[str, float],
) -> None:
    """The steps of digests, read from the rows another transaction inserted, with this one's updates
    merged in again (their logs too): updated at the end of apply like any step read at its start."""
    rows = queries.step_states(session, build_id, digests)
    for digest in digests:
        if (row := rows.get(digest)) is None:  # deleted since with its build: nothing to write
            continue
        mine, state = steps[digest], _StepState.of(row)
        if digest == STEPS_TRUNCATED_DIGEST:
            state.name = mine.name
        for v in vertices:
            if v.digest == digest:
                state.merge(v)
        state.has_logs = state.has_logs or mine.has_logs
        steps[digest] = state
    _meter(session, project_id, build_id, [steps[d] for d in digests], savings)


def _durations(session: Session, project_id: str, build_id: str, names: set[str]) -> dict[str, float]:
    """step name -> seconds its last real run in the project took (0 when it never ran)."""
    runs = queries.last_real_runs(session, project_id, names, build_id)
    seconds = {
        name: max(0.0, (completed - started).total_seconds()) for name, (started, completed) in runs.items()
    }
    return {name: seconds.get(name, 0.0) for name in names}


def _earlier_runs(
    session: Session,
    project_id: str,
    build_id: str,
    steps: dict[str, _StepState],
    vertices: Sequence[VertexUpdate],
) -> dict[str, float]:
    """step name -> what its last real run in the project took, for each step these updates leave cached
    and not yet metered: read before this transaction writes anything."""
    names: dict[str, str] = {d: s.name for d, s in steps.items()}
    cached = {d for d, s in steps.items() if s.cached and s.saved_seconds is None}
    for v in vertices:
        if v.name:
            names[v.digest] = v.name[:MAX_STEP_NAME]
        if v.cached and (v.digest not in steps or steps[v.digest].saved_seconds is None):
            cached.add(v.digest)
    return _durations(session, project_id, build_id, {names[d] for d in cached if names.get(d)})


def with_out_of_memory_line(error: str, step_error: str) -> str:
    """A build's error with the out-of-memory line of a step's error, once."""
    if OUT_OF_MEMORY in error:
        return error
    line = step_error[step_error.index(OUT_OF_MEMORY) :].splitlines()[0]
    return f"{error}\n{line}"


def _append_logs(
    session: Session,
    build_id: str,
    logs: Sequence[LogChunk],
    cap: int,
    volume: LogVolume | None,
) -> set[str]:
    """Inserts the chunks' lines within the cap; answers the digests of the steps that now have logs."""
    with_logs: set[str] = set()
    if volume is None:
        volume = queries.add_log_volume(session, build_id)
    rows: list[dict[str, object]] = []
    for chunk in logs:
        if volume.truncated:
            break
        data = chunk.data
        count = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        cost = max(len(data), MIN_LINE_COST * count)
        if volume.bytes + cost <= cap:  # then count <= cap / MIN_LINE_COST: splitting is bounded
            volume.bytes += cost
            lines = data.split(b"\n")[:count]
        else:  # the lines that still fit, each at its own cost, then the marker; no more split off
            volume.truncated = True
            lines, start = [], 0
            while start < len(data):
                end = data.find(b"\n", start)
                end = len(data) if end < 0 else end
                line_cost = max(end - start + 1, MIN_LINE_COST)
                if volume.bytes + line_cost > cap:
                    break
                volume.bytes += line_cost
                lines.append(data[start:end])
                start = end + 1
        at = chunk.at or utcnow()
        for line in lines:
            # A line never holds part of a UTF-8 sequence that another holds: "\n" is never inside one.
            text = storable(line.decode("utf-8", errors="replace")).rstrip("\r")
            rows.append(_log_row(build_id, chunk, at, text))
            if len(rows) >= LOG_INSERT_BATCH:
                queries.insert_log_lines(session, rows)
                rows = []
        if volume.truncated:
            rows.append(_log_row(build_id, chunk, at, TRUNCATED.format(cap=cap)))
        if lines or volume.truncated:
            with_logs.add(chunk.digest)
    queries.insert_log_lines(session, rows)
    return with_logs


def _log_row(build_id: str, chunk: LogChunk, at: datetime, text: str) -> dict[str, object]:
    return {
        "build_id": build_id,
        "digest": chunk.digest,
        "stream": chunk.stream,
        "logged_at": at,
        "text": text,
    }
