"""Child processes: stopping the ones the supervisor runs (builders, the registry); tying a worker to its
parent; how long to wait before starting again one that died."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Waits before starting again a process that died soon after its start, by quick deaths in a row.
RESTART_WAITS_SECONDS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_SECONDS = 60.0


@dataclass
class RestartBackoff:
    """One process's restarts: none to wait after a death once it ran a minute (it starts over); after a
    quick death the next wait of RESTART_WAITS_SECONDS, so one that keeps dying is started every 30 s,
    never in a busy loop. It keeps the time of the last start itself (monotonic clock); the arguments
    that name a time are for tests."""

    waits: tuple[float, ...] = RESTART_WAITS_SECONDS
    stable_after: float = STABLE_AFTER_SECONDS
    quick_deaths: int = 0
    started_at: float = 0.0

    def started(self, at: float | None = None) -> None:
        """The process has (re)started."""
        self.started_at = time.monotonic() if at is None else at

    def wait(self, died_at: float | None = None) -> float:
        """Counts a death; how long to wait before the next start."""
        lived = (time.monotonic() if died_at is None else died_at) - self.started_at
        self.quick_deaths = 0 if lived >= self.stable_after else self.quick_deaths + 1
        return self.waits[min(self.quick_deaths, len(self.waits) - 1)]

    def keeps_dying(self) -> bool:
        """The wait has reached its longest."""
        return self.quick_deaths >= len(self.waits) - 1


async def terminate(process: subprocess.Popen[bytes], grace_seconds: float = 15) -> None:
    """SIGTERM, then SIGKILL to its whole process group (children such as RUN containers included) if it
    has not exited within grace_seconds. The children are started in sessions of their own."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=grace_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)


_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded here, in the parent: a child between fork and exec should call nothing that may take a lock.
_LIBC = _libc()


def parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn for Popen: the child gets sig when the thread that started it (the supervisor's event
    loop) dies, even by SIGKILL. Children started in their own session need it: nothing else reaches them."""

    def arm() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig))

    return arm


def stop_leftover(pid: int, grace_seconds: float = 10) -> None:
    """Stops a process an earlier supervisor left behind and waits until it is gone (SIGKILL after the
    grace), so that whatever it held (a port, a lock) is free when this returns."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while _exists(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace_seconds
        time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM if its parent dies, so that no worker outlives the supervisor."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
