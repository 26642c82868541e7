"""A singular supervisor loop that bounds what finished builds keep in the store: builds that finished longer
ago than --build-retention-days are deleted with everything they kept (steps, logs, status reports), the
oldest first; and an organization whose builds keep more than --build-history-quota-mib of logs and status
reports loses its oldest finished builds until it is back under it."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from functools import partial

from opendepot.builds import service as builds
from opendepot.store import Store

log = logging.getLogger("opendepot.retention")

# One run sweeps for at most this long, slice by slice (each slice its own short transaction, so the builds'
# own writes get the store in between); what is left waits for the next run.
RUN_BUDGET_SECONDS = 5.0
# How often the history quota is looked at: its sum reads every build's two counters, so not much more often;
# between looks an organization can pass it by what its builds log in that time.
QUOTA_INTERVAL_SECONDS = 30.0


class BuildRetention:
    name = "build retention"

    def __init__(self, store: Store, retention: timedelta | None, history_quota_bytes: int = 0) -> None:
        self.store = store
        self.retention = retention
        self.history_quota_bytes = history_quota_bytes

    @property
    def interval(self) -> float:
        # At least ten looks per retention period, and at most one a minute.
        looks = [min(60.0, max(1.0, self.retention.total_seconds() / 10))] if self.retention else []
        if self.history_quota_bytes:
            looks.append(QUOTA_INTERVAL_SECONDS)
        return min(looks, default=60.0)

    async def run_once(self) -> None:
        deadline = time.monotonic() + RUN_BUDGET_SECONDS
        if self.retention is not None:
            await self._expire(self.retention, deadline)
        if self.history_quota_bytes:
            await self._bound_history(self.history_quota_bytes, deadline)

    async def _expire(self, retention: timedelta, deadline: float) -> None:
        pruned = rows = 0
        while time.monotonic() < deadline:
            slice_builds, slice_rows = await self.store.run(lambda s: builds.prune_slice(s, retention))
            if not (slice_builds or slice_rows):
                break
            pruned, rows = pruned + slice_builds, rows + slice_rows
        if pruned or rows:
            log.info(
                "deleted %d build(s) that finished over %g day(s) ago, and %d of their steps, log lines and "
                "status reports",
                pruned,
                retention.total_seconds() / 86400,
                rows,
            )

    async def _bound_history(self, quota_bytes: int, deadline: float) -> None:
        # A read of every build's counters (140 ms for 200,000 builds on SQLite): in a thread, where SQLite
        # lets go of the GIL, never inline on the supervisor's loop.
        over = await asyncio.to_thread(
            self.store.read_now, lambda s: builds.over_history_quota(s, quota_bytes)
        )
        for organization_id, excess in over:
            pruned = rows = freed = 0
            while freed < excess and time.monotonic() < deadline:
                slice_builds, slice_rows, slice_bytes = await self.store.run(
                    partial(
                        builds.prune_history_slice, organization_id=organization_id, excess=excess - freed
                    )
                )
                if not (slice_builds or slice_rows):
                    break
                pruned, rows, freed = pruned + slice_builds, rows + slice_rows, freed + slice_bytes
            if pruned or rows:
                log.info(
                    "organization %s kept %.1f MiB of build logs over --build-history-quota-mib %d: deleted "
                    "its %d oldest finished build(s), and %d of their steps, log lines and status reports",
                    organization_id,
                    excess / (1 << 20),
                    quota_bytes >> 20,
                    pruned,
                    rows,
                )
