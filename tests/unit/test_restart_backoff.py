"""The wait before starting again a process that died (the API workers, the gateway's relay process)."""

from __future__ import annotations

from opendepot.processes import RESTART_WAITS_SECONDS, RestartBackoff


def test_quick_deaths_in_a_row_wait_longer_up_to_the_longest_wait() -> None:
    backoff = RestartBackoff()
    waits = [backoff.wait(lived_seconds=2.0) for _ in range(8)]
    assert waits == [1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0, 30.0]
    assert backoff.keeps_dying()


def test_a_process_that_ran_a_minute_starts_again_at_once_and_starts_over() -> None:
    backoff = RestartBackoff()
    for _ in range(4):
        backoff.wait(lived_seconds=0.5)
    assert backoff.wait(lived_seconds=61.0) == 0.0
    assert not backoff.keeps_dying()
    assert backoff.wait(lived_seconds=0.5) == RESTART_WAITS_SECONDS[1]  # the first quick death again


def test_the_waits_are_settable() -> None:
    backoff = RestartBackoff(waits=(0.0, 0.1, 0.2), stable_after=5.0)
    assert [backoff.wait(1.0), backoff.wait(1.0), backoff.wait(1.0)] == [0.1, 0.2, 0.2]
    assert backoff.keeps_dying()
