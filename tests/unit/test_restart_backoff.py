"""The wait before starting again a process that died (the API workers, the gateway's relay process)."""

from __future__ import annotations

import time

from opendepot.processes import RESTART_WAITS_SECONDS, RestartBackoff


def deaths(backoff: RestartBackoff, lived_seconds: float, count: int) -> list[float]:
    """The waits after `count` deaths in a row, each `lived_seconds` after its start."""
    waits = []
    clock = 1000.0
    for _ in range(count):
        backoff.started(at=clock)
        clock += lived_seconds
        waits.append(backoff.wait(died_at=clock))
        clock += waits[-1]
    return waits


def test_quick_deaths_in_a_row_wait_longer_up_to_the_longest_wait() -> None:
    backoff = RestartBackoff()
    assert deaths(backoff, 2.0, 8) == [1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0, 30.0]
    assert backoff.keeps_dying()


def test_a_process_that_ran_a_minute_starts_again_at_once_and_starts_over() -> None:
    backoff = RestartBackoff()
    deaths(backoff, 0.5, 4)
    assert deaths(backoff, 61.0, 1) == [0.0]
    assert not backoff.keeps_dying()
    assert deaths(backoff, 0.5, 1) == [RESTART_WAITS_SECONDS[1]]  # the first quick death again


def test_the_waits_are_settable() -> None:
    backoff = RestartBackoff(waits=(0.0, 0.1, 0.2), stable_after=5.0)
    assert deaths(backoff, 1.0, 3) == [0.1, 0.2, 0.2]
    assert backoff.keeps_dying()


def test_it_keeps_the_start_time_itself_on_the_monotonic_clock() -> None:
    backoff = RestartBackoff(waits=(0.0, 7.0), stable_after=3600.0)
    backoff.started()
    assert backoff.started_at <= time.monotonic()
    assert backoff.wait() == 7.0  # died well within the hour: a quick death
    backoff = RestartBackoff(waits=(0.0, 7.0), stable_after=0.0)
    backoff.started()
    assert backoff.wait() == 0.0  # anything counts as stable
