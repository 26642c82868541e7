"""The builder reconciler: runs in the supervisor, owns every builder process.

Each run it reads the store (the bus between API workers and itself): releases leases whose heartbeats
stopped and ends builds nobody holds; starts a builder for every (project, platform) with a live lease and
marks it running once it answers; stops builders idle for longer than the idle timeout (their cache stays);
and honours reset requests from workers. It tells the gateway which leases are live so that connections of
finished, released or expired builds are cut."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from opendepot.builds import queries as build_queries
from opendepot.builds import service as builds
from opendepot.clock import utcnow
from opendepot.projects import queries as project_queries
from opendepot.projects.service import cache_of, entitlements_of
from opendepot.store import Store
from opendepot.usage import queries as usage_queries

from . import queries, service
from .backend import Backend, BuilderSpec, CacheRelief, RecordedBuilder, WorkerProbe
from .states import ACTIVE, Action, BuilderState, Observation, retry_delay, transition

log = logging.getLogger("opendepot.machines")


@dataclass(frozen=True, slots=True)
class ReconcilerSettings:
    lease_timeout: timedelta
    idle_timeout: timedelta
    sample_seconds: float = 60.0
    tick_seconds: float = 0.2
    # A build running longer is ended server-side (lease released: its builder is freed); None: no limit.
    build_timeout: timedelta | None = None
    # A running builder is asked for its workers (BuildKit's ListWorkers) this often; unanswered within the
    # timeout twice in a row, it is wedged and restarted.
    probe_seconds: float = 15.0
    probe_timeout: float = 10.0
    # Builders running at once, per organization and in all (0: no cap). Past a cap a lease waits (its build
    # sees GetBuildKitConnection pending) until a builder is free; an idle one gives its place up at once.
    max_builders_per_org: int = 0
    max_builders: int = 0


WEDGED_AFTER_UNANSWERED = 2
# The longest a stop waits for the cache size of the builder it stops.
STOP_SAMPLE_SECONDS = 10.0


class Connections(Protocol):
    """What the reconciler asks of the gateway: cut the connections builds no longer hold."""

    def keep_only(self, live: set[tuple[str, str]]) -> None: ...
    def cut_project(self, project_id: str, platform: str) -> None: ...


@dataclass(slots=True)
class Builder:
    """What the reconciler knows of one (project, platform) builder it runs."""

    state: BuilderState
    last_used: float = 0.0
    sampled_at: float = 0.0
    # Failures in a row (reset once it runs) and when the last one was seen: the retry backoff.
    failures: int = 0
    failed_at: float = 0.0
    # The ListWorkers probe in flight (it runs beside the reconciler: a wedged builder must not stall it).
    probe: asyncio.Task[bool] | None = None
    probed_at: float = 0.0
    unanswered: int = 0
    # A build held it since its cache was last relieved, and the relief (a prune) in flight.
    built: bool = False
    relief: asyncio.Task[int | None] | None = None
    # The cache-size sample in flight (`buildctl du`, beside the reconciler: a wedged BuildKit never answers
    # it, and awaited in the reconciler's run it held every builder's lifecycle for up to 30 s).
    sample: asyncio.Task[None] | None = None

    def retry_in(self, now: float) -> float:
        if self.state != BuilderState.FAILED:
            return 0.0
        return max(0.0, self.failed_at + retry_delay(self.failures) - now)


class BuilderReconciler:
    """Each run reads the desired set (live leases) and the requests in the store, observes every builder
    concerned and lets `states.transition` decide; it only carries the decision out."""

    name = "builder reconciler"

    def __init__(
        self, store: Store, backend: Backend, gateway: Connections, settings: ReconcilerSettings
    ) -> None:
        self.store = store
        self.backend = backend
        self.gateway = gateway
        self.settings = settings
        # Builders whose process this reconciler started and has not seen stop, and failed ones (their
        # backoff); any other is STOPPED.
        self._builders: dict[tuple[str, str], Builder] = {}
        # Seconds, monotonic: idle times, sampling and the retry backoff (tests turn it by hand).
        self.clock: Callable[[], float] = time.monotonic
        # Wanted builders held back by a cap, and since when (the longest waiting goes first).
        self._waiting: dict[tuple[str, str], float] = {}
        self._organization_of: dict[str, str] = {}

    @property
    def interval(self) -> float:
        return self.settings.tick_seconds

    def state_of(self, project_id: str, platform: str) -> BuilderState:
        builder = self._builders.get((project_id, platform))
        return BuilderState.STOPPED if builder is None else builder.state

    async def run_once(self) -> None:
        lease_timeout, build_timeout = self.settings.lease_timeout, self.settings.build_timeout
        # Looked for first without the write lock: taking it five times a second for nothing made the builds'
        # own small writes (CreateBuild, FinishBuild) wait behind this tick now and then.
        if await self.store.read_lookup(
            lambda c: builds.reaping_due(c, lease_timeout, build_timeout=build_timeout)
        ):
            expired, abandoned = await self.store.run(
                lambda s: builds.reap(s, lease_timeout, build_timeout=build_timeout)
            )
            if expired or abandoned:
                log.info("released %d stale lease(s), ended %d abandoned build(s)", expired, abandoned)
        leases = await self.store.read_lookup(build_queries.active_leases)
        resets = await self.store.read_lookup(queries.resetting)
        now = self.clock()
        needed = await self._admitted({(project, platform) for project, platform, _build in leases}, now)
        self.gateway.keep_only({(build, platform) for _project, platform, build in leases})
        # Resets first (a reset builder is not started again in the same run), then the rest.
        for key in [*sorted(resets), *sorted((needed | set(self._builders)) - resets)]:
            await self._reconcile(key, key in needed, key in resets, now)

    async def _admitted(self, wanted: set[tuple[str, str]], now: float) -> set[tuple[str, str]]:
        """The wanted builders that may run this time: every one already active, then those waiting, the
        longest waiting first, while the caps allow. An idle builder (no lease) within the same cap gives its
        place up to a waiting one (stopped; its cache stays). Without caps: all of them."""
        per_org, in_all = self.settings.max_builders_per_org, self.settings.max_builders
        self._waiting = {key: since for key, since in self._waiting.items() if key in wanted}
        if not (per_org or in_all):
            return wanted
        active = {key for key, builder in self._builders.items() if builder.state in ACTIVE}
        admitted = wanted & active
        for key in wanted - active:
            self._waiting.setdefault(key, now)
        if not self._waiting:
            return admitted
        organization = await self._organizations({key[0] for key in active | set(self._waiting)})
        counts = Counter(organization.get(key[0]) for key in active)
        for key in sorted(self._waiting, key=lambda k: (self._waiting[k], k)):
            org = organization.get(key[0])
            if org is None:  # the project is gone; its leases end with it
                continue
            org_full = bool(per_org) and counts[org] >= per_org
            all_full = bool(in_all) and len(active) >= in_all
            if org_full or all_full:
                idle = [k for k in active - wanted if not org_full or organization.get(k[0]) == org]
                if not idle:
                    if self._waiting[key] == now:  # said once, when it starts waiting
                        why = (
                            f"organization {org} runs {counts[org]} (--max-builders-per-org {per_org})"
                            if org_full
                            else f"{len(active)} builders run (--max-builders {in_all})"
                        )
                        log.info("builder %s/%s waits: %s", key[0], key[1], why)
                    continue
                given_up = min(idle, key=lambda k: self._builders[k].last_used)
                log.info("builder %s/%s stops, idle, to make room for %s/%s", *given_up, *key)
                await self._stop(given_up, self._builders[given_up], BuilderState.STOPPED)
                active.discard(given_up)
                counts[organization.get(given_up[0])] -= 1
            admitted.add(key)
            active.add(key)
            counts[org] += 1
            del self._waiting[key]
        return admitted

    async def _organizations(self, project_ids: set[str]) -> dict[str, str]:
        """project -> organization for these projects (remembered: a project never changes organization)."""
        unknown = project_ids - self._organization_of.keys()
        if unknown:

            def read(session: Session) -> dict[str, str]:
                owners = (project_queries.owner(session, project_id) for project_id in unknown)
                return dict(owner for owner in owners if owner is not None)

            self._organization_of.update(await self.store.read(read))
        return {p: self._organization_of[p] for p in project_ids if p in self._organization_of}

    async def _reconcile(self, key: tuple[str, str], needed: bool, reset: bool, now: float) -> None:
        builder = self._builders.get(key) or Builder(BuilderState.STOPPED)
        if needed:
            builder.last_used = now
        alive = builder.state in ACTIVE and self.backend.alive(*key)
        seen = Observation(
            needed=needed,
            reset_requested=reset,
            alive=alive,
            answers=builder.state == BuilderState.STARTING and alive and await self.backend.ready(*key),
            idle_seconds=now - builder.last_used,
            idle_timeout=self.settings.idle_timeout.total_seconds(),
            retry_in=builder.retry_in(now),
            wedged=builder.state == BuilderState.RUNNING and alive and self._wedged(key, builder, now),
        )
        self._sample_when_due(key, builder, alive, now)
        self._relieve(key, builder, needed, alive)
        step = transition(builder.state, seen)
        if step.action == Action.START:
            await self._start(key, builder)
        elif step.action == Action.STOP:
            error = None
            if step.state == BuilderState.FAILED:
                error = self._failed(key, builder, step.reason, now)
            elif not reset and builder.state == BuilderState.RUNNING and not alive:
                log.warning("builder %s/%s exited; it restarts on the next lease", *key)
            elif not reset and step.reason.startswith("wedged"):
                log.warning("builder %s/%s %s; stopped, it restarts on the next lease", *key, step.reason)
            await self._stop(key, builder, step.state, discard=reset, error=error)
        elif step.state != builder.state:
            if step.state == BuilderState.RUNNING:
                builder.failures = 0
                builder.probed_at = now
            await self._enter(key, builder, step.state)

    def _relieve(self, key: tuple[str, str], builder: Builder, needed: bool, alive: bool) -> None:
        """Once its builds are over, a builder's cache is brought back under its volume's GC target if a build
        overfilled it (CacheRelief backends), beside the reconciler: a prune may take seconds."""
        relief = builder.relief
        if relief is not None and relief.done():
            builder.relief = None
            if not relief.cancelled() and relief.exception() is None and (freed := relief.result()):
                log.info("builder %s/%s: pruned %d MiB of its cache after a build", *key, freed >> 20)
            elif not relief.cancelled() and relief.exception() is not None:
                log.warning("builder %s/%s: pruning its cache failed: %s", *key, relief.exception())
        if needed:
            builder.built = True
        elif (
            builder.built
            and builder.relief is None
            and builder.state == BuilderState.RUNNING
            and alive
            and isinstance(self.backend, CacheRelief)
        ):
            builder.built = False
            builder.relief = asyncio.create_task(self.backend.relieve(*key))

    def _wedged(self, key: tuple[str, str], builder: Builder, now: float) -> bool:
        """Collects the last ListWorkers probe and starts the next when due; True once BuildKit left
        WEDGED_AFTER_UNANSWERED probes in a row unanswered."""
        probe = builder.probe
        if probe is not None and probe.done():
            builder.probe = None
            if not probe.cancelled():
                answered = probe.exception() is None and probe.result()
                builder.unanswered = 0 if answered else builder.unanswered + 1
                if not answered:
                    log.warning("builder %s/%s: BuildKit did not answer ListWorkers", *key)
        if (
            builder.probe is None
            and isinstance(self.backend, WorkerProbe)
            and now - builder.probed_at >= self.settings.probe_seconds
        ):
            builder.probed_at = now
            builder.probe = asyncio.create_task(self.backend.responsive(*key, self.settings.probe_timeout))
        return builder.unanswered >= WEDGED_AFTER_UNANSWERED

    @staticmethod
    def _failed(key: tuple[str, str], builder: Builder, reason: str, now: float) -> str:
        """Counts the failure and says why, and when the builder is tried again, for the row's error (the
        GetBuildKitConnection answer quotes it)."""
        builder.failures += 1
        builder.failed_at = now
        delay = retry_delay(builder.failures)
        retry_at = (utcnow() + timedelta(seconds=delay)).strftime("%Y-%m-%dT%H:%M:%SZ")
        error = (
            f"{reason} (failed {builder.failures} time(s) in a row; "
            f"retried on the next acquire after {retry_at}, in {delay:g} s)"
        )
        log.warning("builder %s/%s failed: %s", *key, error)
        return error

    async def _enter(
        self,
        key: tuple[str, str],
        builder: Builder,
        state: BuilderState,
        *,
        pid: int | None = None,
        error: str | None = None,
    ) -> None:
        """Records the builder's new state: in the store (API workers read it) and here."""
        builder.state = state
        if state in ACTIVE or state == BuilderState.FAILED:
            self._builders[key] = builder
        else:
            self._builders.pop(key, None)
        await self.store.run(lambda s: service.set_state(s, key[0], key[1], state, pid=pid, error=error))

    async def _start(self, key: tuple[str, str], builder: Builder) -> None:
        project = await self.store.read(lambda s: project_queries.get_detached(s, key[0]))
        if project is None:
            return
        spec = BuilderSpec(
            project_id=key[0],
            platform=key[1],
            cache=cache_of(project),
            hardware=project.hardware,
            entitlements=entitlements_of(project),
        )
        pid = await self.backend.start(spec)
        await self._enter(key, builder, BuilderState.STARTING, pid=pid)
        log.info("starting builder %s/%s (pid %d)", key[0], key[1], pid)

    def _sample_when_due(self, key: tuple[str, str], builder: Builder, alive: bool, now: float) -> None:
        """Collects the last cache-size sample and starts the next when due, beside the reconciler."""
        sample = builder.sample
        if sample is not None and sample.done():
            builder.sample = None
            if not sample.cancelled() and sample.exception() is not None:
                log.warning("builder %s/%s: sampling its cache failed: %s", *key, sample.exception())
        if (
            builder.sample is None
            and builder.state == BuilderState.RUNNING
            and alive
            and now - builder.sampled_at >= self.settings.sample_seconds
        ):
            builder.sampled_at = now
            builder.sample = asyncio.create_task(self._sample(key))

    async def _sample(self, key: tuple[str, str]) -> None:
        """Records the builder's cache size for usage figures."""
        size = await self.backend.disk_usage(*key)
        if size is not None:
            await self.store.run(lambda s: usage_queries.add_sample(s, key[0], key[1], utcnow(), size))

    async def _stop(
        self,
        key: tuple[str, str],
        builder: Builder,
        state: BuilderState,
        *,
        discard: bool = False,
        error: str | None = None,
    ) -> None:
        if builder.probe is not None:
            builder.probe.cancel()
            builder.probe = None
        for task in (builder.relief, builder.sample):
            if task is not None:
                task.cancel()
        builder.relief = builder.sample = None
        wedged = builder.unanswered >= WEDGED_AFTER_UNANSWERED
        if builder.state == BuilderState.RUNNING and not wedged and self.backend.alive(*key):
            # Its size on the way out, bounded: a builder wedged since its last probe would not answer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sample(key), STOP_SAMPLE_SECONDS)
        self.gateway.cut_project(key[0], key[1])
        await self.backend.stop(*key)
        if discard:
            # A reset or delete: what the backend keeps beyond the cache directory goes too (a volume).
            await self.backend.discard(*key)
        await self._enter(key, builder, state, error=error)
        log.info("stopped builder %s/%s", *key)

    async def shutdown(self) -> None:
        """Stops every builder so that none outlives the server; their caches stay."""
        await self.backend.stop_all()
        for key, builder in list(self._builders.items()):
            await self._enter(key, builder, BuilderState.STOPPED)


async def reap_leftovers(store: Store, backend: Backend) -> None:
    """At start: builders recorded by an earlier supervisor are stopped and marked so; none is adopted."""
    machines = await store.read(queries.all_machines)
    leftovers = [
        RecordedBuilder(m.project_id, m.platform, m.pid)
        for m in machines
        if m.state in (*ACTIVE, BuilderState.RESETTING)
    ]
    await backend.reap_leftovers(leftovers)

    def mark_stopped(session: Session) -> None:
        for machine in machines:
            service.set_state(session, machine.project_id, machine.platform, BuilderState.STOPPED)

    await store.run(mark_stopped)
