"""The machine manager: runs in the supervisor, owns every builder process.

Each tick it reads the store (the bus between API workers and itself): releases leases whose heartbeats
stopped and ends builds nobody holds; starts a builder for every (project, platform) with a live lease and
marks it running once it answers; stops builders idle for longer than the idle timeout (their cache stays);
and honours reset requests from workers. It tells the gateway which leases are live so that connections of
finished, released or expired builds are cut."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from opendepot.builds import queries as build_queries
from opendepot.builds import service as builds
from opendepot.clock import utcnow
from opendepot.projects import queries as project_queries
from opendepot.projects.service import cache_of
from opendepot.store import Store
from opendepot.usage import queries as usage_queries

from . import queries, service
from .backend import Backend, BuilderSpec, RecordedBuilder

log = logging.getLogger("opendepot.machines")


@dataclass(frozen=True, slots=True)
class ReconcilerSettings:
    lease_timeout: timedelta
    idle_timeout: timedelta
    sample_seconds: float = 60.0
    tick_seconds: float = 0.2


class Connections(Protocol):
    """What the reconciler asks of the gateway: cut the connections builds no longer hold."""

    def keep_only(self, live: set[tuple[str, str]]) -> None: ...
    def cut_project(self, project_id: str, platform: str) -> None: ...


class BuilderReconciler:
    def __init__(
        self, store: Store, backend: Backend, gateway: Connections, settings: ReconcilerSettings
    ) -> None:
        self.store = store
        self.backend = backend
        self.gateway = gateway
        self.settings = settings
        self._last_used: dict[tuple[str, str], float] = {}
        self._starting: set[tuple[str, str]] = set()
        self._running: set[tuple[str, str]] = set()
        self._sampled: dict[tuple[str, str], float] = {}

    name = "builder reconciler"

    @property
    def interval(self) -> float:
        return self.settings.tick_seconds

    async def run_once(self) -> None:
        expired, abandoned = await self.store.run(lambda s: builds.reap(s, self.settings.lease_timeout))
        if expired or abandoned:
            log.info("released %d stale lease(s), ended %d abandoned build(s)", expired, abandoned)
        leases = await self.store.read(build_queries.active_leases)
        machines = await self.store.read(queries.all_machines)
        now = time.monotonic()
        needed = {(project, platform) for project, platform, _build in leases}
        self.gateway.keep_only({(build, platform) for _project, platform, build in leases})

        for machine in machines:
            key = (machine.project_id, machine.platform)
            if machine.state == "resetting":
                await self._stop(key, "stopped", discard=True)
                needed.discard(key)
        for key in needed:
            self._last_used[key] = now
            if key not in self._starting and key not in self._running:
                await self._start(key)
        for key in list(self._starting):
            if not self.backend.alive(*key):
                await self._mark(key, "failed", error="buildkitd exited while starting; see its log")
                self._starting.discard(key)
            elif await self.backend.ready(*key):
                self._starting.discard(key)
                self._running.add(key)
                await self._mark(key, "running")
        for key in list(self._running):
            if self.backend.alive(*key) and now - self._sampled.get(key, 0.0) >= self.settings.sample_seconds:
                await self._sample(key)
            if not self.backend.alive(*key):
                log.warning("builder %s/%s exited; it restarts on the next lease", *key)
                self._running.discard(key)
                await self._mark(key, "stopped")
            elif (
                key not in needed
                and now - self._last_used.get(key, now) > self.settings.idle_timeout.total_seconds()
            ):
                await self._stop(key, "stopped")

    async def _start(self, key: tuple[str, str]) -> None:
        project = await self.store.read(lambda s: project_queries.get_detached(s, key[0]))
        if project is None:
            return
        spec = BuilderSpec(
            project_id=key[0], platform=key[1], cache=cache_of(project), hardware=project.hardware
        )
        pid = await self.backend.start(spec)
        self._starting.add(key)
        await self._mark(key, "starting", pid=pid)
        log.info("starting builder %s/%s (pid %d)", key[0], key[1], pid)

    async def _sample(self, key: tuple[str, str]) -> None:
        """Records the builder's cache size for usage figures."""
        self._sampled[key] = time.monotonic()
        size = await self.backend.disk_usage(*key)
        if size is not None:
            await self.store.run(lambda s: usage_queries.add_sample(s, key[0], key[1], utcnow(), size))

    async def _stop(self, key: tuple[str, str], state: str, *, discard: bool = False) -> None:
        if key in self._running and self.backend.alive(*key):
            await self._sample(key)
        self.gateway.cut_project(key[0], key[1])
        await self.backend.stop(*key)
        if discard:
            await self.backend.discard(*key)
        self._starting.discard(key)
        self._running.discard(key)
        self._last_used.pop(key, None)
        await self._mark(key, state)
        log.info("stopped builder %s/%s", *key)

    async def _mark(
        self, key: tuple[str, str], state: str, *, pid: int | None = None, error: str | None = None
    ) -> None:
        await self.store.run(lambda s: service.set_state(s, key[0], key[1], state, pid=pid, error=error))

    async def shutdown(self) -> None:
        """Stops every builder so that none outlives the server; their caches stay."""
        keys = self._starting | self._running
        await self.backend.stop_all()
        for key in keys:
            await self._mark(key, "stopped")


async def reap_leftovers(store: Store, backend: Backend) -> None:
    """At start: builders recorded by an earlier supervisor are stopped and marked so; none is adopted."""
    machines = await store.read(queries.all_machines)
    leftovers = [
        RecordedBuilder(m.project_id, m.platform, m.pid)
        for m in machines
        if m.state in ("starting", "running", "resetting")
    ]
    await backend.reap_leftovers(leftovers)

    def mark_stopped(session: Session) -> None:
        for machine in machines:
            service.set_state(session, machine.project_id, machine.platform, "stopped")

    await store.run(mark_stopped)
