"""A builder's lifecycle: its states, and every transition between them in one function.

The reconciler observes each builder (is it needed, is a reset asked for, is the process alive, does it
answer) and `transition` says what comes next; the reconciler carries that out. Nothing here does I/O, so
the whole lifecycle is unit-tested as a table.

    STOPPED --needed--> STARTING --answers--> RUNNING --idle too long--> STOPPED
    FAILED --needed, backoff over--> STARTING   (backoff: 1 s, 2 s, 4 s ... 60 s after the last failure)
    STARTING --process gone--> FAILED          RUNNING --process gone--> STOPPED
    (a process gone is still stopped: what it left in its cgroup, such as RUN steps, is killed)
    RUNNING --wedged (ListWorkers unanswered twice in a row)--> STOPPED (stopped first)
    any --reset requested (row RESETTING, written by an API worker)--> STOPPED (stopped first)"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BuilderState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    # Asked for by an API worker (a project reset or delete); the reconciler stops the builder.
    RESETTING = "resetting"
    STOPPED = "stopped"
    FAILED = "failed"


# States with a process the reconciler must watch.
ACTIVE = frozenset({BuilderState.STARTING, BuilderState.RUNNING})


class Action(StrEnum):
    NOTHING = "nothing"
    START = "start"
    # Stop the process (its cache stays) and release what it holds.
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Observation:
    needed: bool = False  # a live lease wants this builder
    reset_requested: bool = False
    alive: bool = False  # the process runs (only looked at in ACTIVE states)
    answers: bool = False  # its socket accepts connections (only looked at while STARTING)
    idle_seconds: float = 0.0  # since a lease last wanted it
    idle_timeout: float = 0.0
    retry_in: float = 0.0  # seconds until a FAILED builder may be started again (its backoff)
    wedged: bool = False  # RUNNING, but BuildKit did not answer ListWorkers in time, repeatedly


@dataclass(frozen=True, slots=True)
class Transition:
    state: BuilderState
    action: Action = Action.NOTHING
    reason: str = ""


def transition(state: BuilderState, seen: Observation) -> Transition:
    """The next state of a builder in `state` that shows `seen`, and what to do to get there."""
    if seen.reset_requested:
        # * -> STOPPED: a reset waits for the builder to be gone before it deletes the cache.
        return Transition(BuilderState.STOPPED, Action.STOP, "reset requested")
    if state == BuilderState.STARTING:
        if not seen.alive:
            # STARTING -> FAILED: the process exited before it answered (its log says why).
            # Stopped all the same: what it left behind is killed before the next attempt.
            return Transition(
                BuilderState.FAILED, Action.STOP, "buildkitd exited while starting; see its log"
            )
        if seen.answers:
            # STARTING -> RUNNING: the socket answers; clients may be handed the gateway now.
            return Transition(BuilderState.RUNNING, reason="answers")
        return Transition(BuilderState.STARTING)
    if state == BuilderState.RUNNING:
        if not seen.alive:
            # RUNNING -> STOPPED: the process went away (killed, crashed); what it left in its cgroup (RUN
            # steps) is killed, and the next lease starts it again.
            return Transition(BuilderState.STOPPED, Action.STOP, "exited")
        if seen.wedged:
            # RUNNING -> STOPPED: the socket accepts but BuildKit does not answer; builds on it hang anyway.
            # The next lease starts a fresh one on the same cache.
            return Transition(BuilderState.STOPPED, Action.STOP, "wedged: BuildKit does not answer")
        if not seen.needed and seen.idle_seconds > seen.idle_timeout:
            # RUNNING -> STOPPED: idle for longer than the idle timeout; the cache stays.
            return Transition(BuilderState.STOPPED, Action.STOP, "idle")
        return Transition(BuilderState.RUNNING)
    if state == BuilderState.FAILED and seen.needed and seen.retry_in > 0:
        # FAILED stays FAILED until its backoff is over: never respawned in a tight loop.
        return Transition(BuilderState.FAILED, reason="backing off")
    # STOPPED, FAILED (or a RESETTING row already handled) -> STARTING when a lease wants the builder.
    if seen.needed:
        return Transition(BuilderState.STARTING, Action.START, "needed")
    return Transition(state)


RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


def retry_delay(failures: int) -> float:
    """How long after its last failure a builder that failed `failures` times in a row waits before it is
    started again: 1 s, 2 s, 4 s ... capped at 60 s."""
    if failures <= 0:
        return 0.0
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** min(failures - 1, 16))
