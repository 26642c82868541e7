"""The one way the supervisor runs something forever: a Loop names itself, says how often it runs and
implements `run_once`; `Loops` runs each as a named task that logs its failures and warns when a run takes
longer than its interval, and stops them all in the reverse order they started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

log = logging.getLogger("opendepot.loops")


class Loop(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def interval(self) -> float:
        """Seconds from the start of one run to the start of the next."""
        ...

    async def run_once(self) -> None: ...


async def run_forever(loop: Loop) -> None:
    """Runs loop.run_once every loop.interval seconds. A failing run is logged and the next one comes on
    time: one bad tick must not stop a background service."""
    while True:
        started = time.monotonic()
        try:
            await loop.run_once()
        except Exception:
            log.exception("%s: a run failed", loop.name)
        elapsed = time.monotonic() - started
        # Sub-second overruns of the fast loops are scheduling noise on a busy host, not news.
        if elapsed > max(loop.interval, 1.0):
            log.warning("%s: a run took %.1f s (interval %.1f s)", loop.name, elapsed, loop.interval)
        await asyncio.sleep(max(0.0, loop.interval - elapsed))


class Loops:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, loop: Loop) -> None:
        task = asyncio.create_task(run_forever(loop), name=loop.name)
        task.add_done_callback(_report_end)
        self._tasks.append(task)

    async def stop(self) -> None:
        """Cancels the loops, last started first, each awaited before the next is cancelled."""
        while self._tasks:
            task = self._tasks.pop()
            task.remove_done_callback(_report_end)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _report_end(task: asyncio.Task[None]) -> None:
    """A loop never ends on its own; if one does, say so loudly rather than let the service go quiet."""
    if task.cancelled():
        log.error("%s stopped (cancelled)", task.get_name())
    elif (error := task.exception()) is not None:
        log.error("%s stopped", task.get_name(), exc_info=error)
    else:
        log.error("%s stopped", task.get_name())
