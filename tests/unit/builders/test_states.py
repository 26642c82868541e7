"""The builder lifecycle as a table: every state against what the reconciler can observe."""

from __future__ import annotations

import pytest

from opendepot.builders.states import Action, BuilderState, Observation, retry_delay, transition

S = BuilderState


@pytest.mark.parametrize(
    ("state", "seen", "expected_state", "expected_action"),
    [
        # Nobody wants a stopped builder: it stays stopped.
        (S.STOPPED, Observation(), S.STOPPED, Action.NOTHING),
        (S.FAILED, Observation(), S.FAILED, Action.NOTHING),
        # A lease wants it: start it (a failed one is tried again once its backoff is over, not before).
        (S.STOPPED, Observation(needed=True), S.STARTING, Action.START),
        (S.FAILED, Observation(needed=True), S.STARTING, Action.START),
        (S.FAILED, Observation(needed=True, retry_in=0.5), S.FAILED, Action.NOTHING),
        (S.FAILED, Observation(retry_in=0.5), S.FAILED, Action.NOTHING),
        # Starting: wait for the socket; the process dying first is a failure.
        (S.STARTING, Observation(needed=True, alive=True), S.STARTING, Action.NOTHING),
        (S.STARTING, Observation(needed=True, alive=True, answers=True), S.RUNNING, Action.NOTHING),
        # ... and it is stopped all the same, so that nothing it left behind survives.
        (S.STARTING, Observation(needed=True, alive=False), S.FAILED, Action.STOP),
        # Running: kept while wanted or within the idle timeout, stopped after it; a dead process is stopped.
        (
            S.RUNNING,
            Observation(needed=True, alive=True, idle_seconds=999, idle_timeout=1),
            S.RUNNING,
            Action.NOTHING,
        ),
        (S.RUNNING, Observation(alive=True, idle_seconds=1, idle_timeout=5), S.RUNNING, Action.NOTHING),
        (S.RUNNING, Observation(alive=True, idle_seconds=6, idle_timeout=5), S.STOPPED, Action.STOP),
        # A dead process (kill -9, crash) is stopped: what it left in its cgroup (RUN steps) is killed.
        (S.RUNNING, Observation(needed=True, alive=False), S.STOPPED, Action.STOP),
        # A wedged builder (alive, socket accepting, BuildKit silent) is stopped, even while wanted.
        (S.RUNNING, Observation(needed=True, alive=True, wedged=True), S.STOPPED, Action.STOP),
        # A reset stops the builder whatever it does, even while a lease wants it.
        (S.RUNNING, Observation(needed=True, alive=True, reset_requested=True), S.STOPPED, Action.STOP),
        (S.STARTING, Observation(alive=True, reset_requested=True), S.STOPPED, Action.STOP),
        (S.STOPPED, Observation(reset_requested=True), S.STOPPED, Action.STOP),
        # A reset clears a failed builder, backoff or not.
        (S.FAILED, Observation(needed=True, reset_requested=True, retry_in=30), S.STOPPED, Action.STOP),
    ],
)
def test_transition(
    state: BuilderState, seen: Observation, expected_state: BuilderState, expected_action: Action
) -> None:
    step = transition(state, seen)
    assert (step.state, step.action) == (expected_state, expected_action)


def test_a_failure_says_where_to_look() -> None:
    assert "log" in transition(S.STARTING, Observation(alive=False)).reason


def test_states_are_the_strings_the_store_holds() -> None:
    assert [s.value for s in BuilderState] == ["starting", "running", "resetting", "stopped", "failed"]


def test_the_retry_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    assert [retry_delay(n) for n in range(9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(10_000) == 60
