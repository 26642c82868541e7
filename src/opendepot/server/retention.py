"""A singular supervisor loop: builds that finished longer ago than --build-retention-days are deleted with
everything they kept (steps, logs, status reports), the oldest first."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from opendepot.builds import service as builds
from opendepot.store import Store

log = logging.getLogger("opendepot.retention")

# One run sweeps for at most this long, slice by slice (each slice its own short transaction, so the builds'
# own writes get the store in between); what is left waits for the next run.
RUN_BUDGET_SECONDS = 5.0


class BuildRetention:
    name = "build retention"

    def __init__(self, store: Store, retention: timedelta) -> None:
        self.store = store
        self.retention = retention

    @property
    def interval(self) -> float:
        # At least ten looks per retention period, and at most one a minute.
        return min(60.0, max(1.0, self.retention.total_seconds() / 10))

    async def run_once(self) -> None:
        started = time.monotonic()
        pruned = rows = 0
        while time.monotonic() - started < RUN_BUDGET_SECONDS:
            slice_builds, slice_rows = await self.store.run(lambda s: builds.prune_slice(s, self.retention))
            if not (slice_builds or slice_rows):
                break
            pruned, rows = pruned + slice_builds, rows + slice_rows
        if pruned or rows:
            log.info(
                "deleted %d build(s) that finished over %g day(s) ago, and %d of their steps, log lines and "
                "status reports",
                pruned,
                self.retention.total_seconds() / 86400,
                rows,
            )
