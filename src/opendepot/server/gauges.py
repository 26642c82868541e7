"""A supervisor loop that sets the store-derived Prometheus gauges (metrics.py): builds by status, builders by
state and backend, live leases, and pending acquires (live leases whose builder is not running yet)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy.orm import Session

from opendepot.builders import queries as builder_queries
from opendepot.builders.states import BuilderState
from opendepot.builds import queries as build_queries
from opendepot.metrics import metrics
from opendepot.store import Store


class StoreGauges:
    name = "metrics-gauges"
    interval = 5.0

    def __init__(self, store: Store, backend: str) -> None:
        self.store = store
        self.backend = backend
        self._seen_states: set[str] = set()
        self._seen_statuses: set[str] = set()

    async def run_once(self) -> None:
        def read(session: Session) -> tuple[dict[str, int], Counter[str], int, int]:
            builds = build_queries.count_by_status(session)
            machines = builder_queries.all_machines(session)
            leases = build_queries.active_leases(session)
            running = {(m.project_id, m.platform) for m in machines if m.state == BuilderState.RUNNING}
            pending = sum(1 for project, platform, _build in leases if (project, platform) not in running)
            return builds, Counter(m.state for m in machines), len(leases), pending

        builds, states, leases, pending = await self.store.read(read)
        measured = metrics()
        # A status or state that went away reads 0, not its last value.
        self._seen_statuses |= set(builds)
        for status in self._seen_statuses:
            measured.builds.labels(status).set(builds.get(status, 0))
        self._seen_states |= set(states)
        for state in self._seen_states:
            measured.builders.labels(state, self.backend).set(states.get(state, 0))
        measured.leases.set(leases)
        measured.pending_acquires.set(pending)
