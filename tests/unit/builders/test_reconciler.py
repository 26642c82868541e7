"""The reconciler against a fake Backend (the seam a Kubernetes backend implements) and a real SQLite store:
leases in, builder processes and builder rows out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from opendepot.auth import Principal, TokenKind
from opendepot.builders import queries as builder_queries
from opendepot.builders import service as builder_service
from opendepot.builders.backend import BuilderSpec, RecordedBuilder
from opendepot.builders.reconciler import BuilderReconciler, ReconcilerSettings, reap_leftovers
from opendepot.builders.states import BuilderState
from opendepot.builds import queries as build_queries
from opendepot.builds import service as builds
from opendepot.organizations import service as organizations
from opendepot.server.background import GatewayLeaseWatch
from opendepot.store import Store
from opendepot.store.engine import WriteLock, sqlite_url
from opendepot.usage.models import CacheSample
from tests.support.domain import project_of

PLATFORM = "amd64"


class FakeBackend:
    def __init__(self) -> None:
        self.started: list[BuilderSpec] = []
        self.stopped: list[tuple[str, str]] = []
        self.discarded: list[tuple[str, str]] = []
        self.alive_now: set[tuple[str, str]] = set()
        self.answering: set[tuple[str, str]] = set()
        self.reaped: list[RecordedBuilder] = []
        self.stopped_all = False
        self.silent: set[tuple[str, str]] = set()  # wedged: never answer ListWorkers
        self.probes = 0
        self.sampled = 0
        self.samples_cut = 0
        self.relieved: list[tuple[str, str]] = []

    async def reap_leftovers(self, recorded: Sequence[RecordedBuilder]) -> None:
        self.reaped = list(recorded)

    async def start(self, spec: BuilderSpec) -> int:
        self.started.append(spec)
        self.alive_now.add((spec.project_id, spec.platform))
        return 4242

    async def ready(self, project_id: str, platform: str) -> bool:
        return (project_id, platform) in self.answering

    def alive(self, project_id: str, platform: str) -> bool:
        return (project_id, platform) in self.alive_now

    async def responsive(self, project_id: str, platform: str, answer_within: float) -> bool:
        self.probes += 1
        return (project_id, platform) not in self.silent

    async def relieve(self, project_id: str, platform: str) -> int | None:
        self.relieved.append((project_id, platform))
        return 5 << 20

    async def stop(self, project_id: str, platform: str) -> None:
        self.stopped.append((project_id, platform))
        self.alive_now.discard((project_id, platform))

    async def discard(self, project_id: str, platform: str) -> None:
        self.discarded.append((project_id, platform))

    async def stop_all(self) -> None:
        self.stopped_all = True
        self.alive_now.clear()

    async def disk_usage(self, project_id: str, platform: str) -> int | None:
        self.sampled += 1
        if (project_id, platform) in self.silent:  # `buildctl du` at a wedged BuildKit: no answer
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.samples_cut += 1
                raise
        return 1234

    async def connect(
        self, project_id: str, platform: str, protocol: Callable[[], asyncio.BaseProtocol]
    ) -> asyncio.Transport:
        raise NotImplementedError

    async def connect_socket(self, project_id: str, platform: str) -> socket.socket:
        raise NotImplementedError


class FakeConnections:
    def __init__(self) -> None:
        self.live: set[tuple[str, str]] = set()
        self.cut: list[tuple[str, str]] = []

    def keep_only(self, live: set[tuple[str, str]]) -> None:
        self.live = live

    def cut_project(self, project_id: str, platform: str) -> None:
        self.cut.append((project_id, platform))


class World:
    def __init__(self, store: Store, settings: ReconcilerSettings | None = None) -> None:
        self.store = store
        self.backend = FakeBackend()
        self.gateway = FakeConnections()
        self.reconciler = BuilderReconciler(
            store,
            self.backend,
            self.gateway,
            settings
            or ReconcilerSettings(
                lease_timeout=timedelta(minutes=5), idle_timeout=timedelta(0), sample_seconds=3600
            ),
        )
        with store.transaction() as session:
            org = organizations.create_organization(session, "acme")
            self.admin = Principal(kind=TokenKind.ORGANIZATION, token_id="t", organization_id=org.id)
            project = project_of(session, self.admin, "web")
            self.project_id = project.id
        self.key = (self.project_id, PLATFORM)

    def lease(self) -> str:
        with self.store.transaction() as session:
            build, _secret = builds.create_build(session, self.admin, self.project_id, [])
            builds.acquire(session, self.admin, build.id, PLATFORM)
            return build.id

    def release(self, build_id: str) -> None:
        with self.store.transaction() as session:
            builds.release(session, self.admin, build_id, PLATFORM)

    def row(self) -> tuple[str | None, str | None]:
        with self.store.transaction() as session:
            machine = builder_queries.get(session, *self.key)
            return (None, None) if machine is None else (machine.state, machine.error)

    def run(self) -> None:
        asyncio.run(self.reconciler.run_once())

    def running_on_a_clock(self) -> list[float]:
        """A lease, and runs until its builder runs; the reconciler's clock is then the returned cell's
        value, which the test moves."""
        now = [1000.0]
        self.reconciler.clock = lambda: now[0]
        self.lease()
        self.backend.answering.add(self.key)
        self.run()
        self.run()
        assert self.row()[0] == "running"
        return now

    def run_in_one_loop(self, times: int, advance: Callable[[], None]) -> None:
        """Runs the reconciler `times` times in one event loop (its ListWorkers probes run beside it),
        calling advance between runs."""

        async def runs() -> None:
            for _ in range(times):
                await self.reconciler.run_once()
                await asyncio.sleep(0)
                advance()

        asyncio.run(runs())


@contextlib.contextmanager
def world_of(tmp_path: Path, settings: ReconcilerSettings | None = None) -> Iterator[World]:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        yield World(store, settings)
    finally:
        store.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with world_of(tmp_path) as world:
        yield world


def kept_up(sample_seconds: float) -> ReconcilerSettings:
    """Builders kept up for an hour (only what the test does may stop one), sampled this often."""
    return ReconcilerSettings(
        lease_timeout=timedelta(minutes=5), idle_timeout=timedelta(hours=1), sample_seconds=sample_seconds
    )


def test_a_lease_starts_the_builder_and_it_runs_once_it_answers(world: World) -> None:
    build_id = world.lease()
    world.run()
    assert [s.project_id for s in world.backend.started] == [world.project_id]
    assert world.row() == ("starting", None)
    assert world.gateway.live == {(build_id, PLATFORM)}
    world.run()
    assert world.row() == ("starting", None)
    world.backend.answering.add(world.key)
    world.run()
    assert world.row() == ("running", None)
    assert world.reconciler.state_of(*world.key) is BuilderState.RUNNING
    assert len(world.backend.started) == 1


def test_a_builder_that_dies_while_starting_fails_and_is_tried_again_after_a_backoff(world: World) -> None:
    now = [1000.0]
    world.reconciler.clock = lambda: now[0]
    world.lease()
    world.run()
    world.backend.alive_now.clear()
    world.run()
    state, error = world.row()
    assert state == "failed" and error is not None and "log" in error
    assert "1 time(s) in a row" in error and "in 1 s" in error
    # What it left behind is stopped with it.
    assert world.backend.stopped == [world.key]
    # Within the backoff, the lease still wanting it does not start it again: no tight loop.
    for _ in range(5):
        world.run()
    assert world.row()[0] == "failed"
    assert len(world.backend.started) == 1
    now[0] += 1.1
    world.run()
    assert world.row()[0] == "starting"
    assert len(world.backend.started) == 2
    # A second failure in a row doubles the wait.
    world.backend.alive_now.clear()
    world.run()
    state, error = world.row()
    assert state == "failed" and error is not None and "2 time(s) in a row" in error and "in 2 s" in error
    now[0] += 1.5
    world.run()
    assert len(world.backend.started) == 2
    now[0] += 1.0
    world.run()
    assert len(world.backend.started) == 3
    # Once it runs, the count starts over.
    world.backend.answering.add(world.key)
    world.run()
    assert world.row() == ("running", None)
    world.backend.alive_now.clear()
    world.run()
    assert world.row()[0] == "stopped"
    world.run()
    assert world.row()[0] == "starting"
    world.backend.answering.clear()
    world.backend.alive_now.clear()
    world.run()
    error = world.row()[1]
    assert error is not None and "1 time(s) in a row" in error


def test_a_reset_clears_a_failed_builder_and_its_backoff(world: World) -> None:
    now = [1000.0]
    world.reconciler.clock = lambda: now[0]
    world.lease()
    for _ in range(3):
        world.run()
        world.backend.alive_now.clear()
        world.run()
        now[0] += 10
    assert world.row()[0] == "failed"
    assert world.reconciler.state_of(*world.key) is BuilderState.FAILED
    with world.store.transaction() as session:
        assert builder_service.request_reset(session, world.project_id) == 1
    world.run()
    assert world.row() == ("stopped", None)
    assert world.reconciler.state_of(*world.key) is BuilderState.STOPPED
    started = len(world.backend.started)
    # No backoff left: the lease still wanting it starts it on the next run, and a failure counts from one.
    world.run()
    assert world.row()[0] == "starting"
    assert len(world.backend.started) == started + 1
    world.backend.alive_now.clear()
    world.run()
    error = world.row()[1]
    assert error is not None and "1 time(s) in a row" in error


def test_an_idle_builder_is_sampled_then_stopped(world: World) -> None:
    build_id = world.lease()
    world.backend.answering.add(world.key)
    world.run()
    world.run()
    assert world.row()[0] == "running"
    world.release(build_id)
    world.run()
    assert world.row()[0] == "stopped"
    assert world.backend.stopped == [world.key]
    assert world.gateway.cut == [world.key]
    with world.store.transaction() as session:
        sizes = [s.bytes for s in session.query(CacheSample).all()]
    assert sizes and set(sizes) == {1234}


def test_a_reset_stops_the_builder_even_while_a_lease_wants_it(world: World) -> None:
    world.lease()
    world.backend.answering.add(world.key)
    world.run()
    world.run()
    with world.store.transaction() as session:
        assert builder_service.request_reset(session, world.project_id) == 1
    world.run()
    assert world.row()[0] == "stopped"
    assert world.backend.stopped == [world.key]
    # ... and what the backend keeps of it beyond the cache directory (a Kubernetes volume) goes too.
    assert world.backend.discarded == [world.key]
    assert len(world.backend.started) == 1
    # The next run starts it again for the lease that still wants it.
    world.run()
    assert world.row()[0] == "starting"


def test_a_running_builder_whose_process_exits_is_marked_stopped(world: World) -> None:
    world.lease()
    world.backend.answering.add(world.key)
    world.run()
    world.run()
    world.backend.alive_now.clear()
    world.run()
    assert world.row()[0] == "stopped"
    # Stopped all the same: the backend kills what the dead process left (its RUN steps' processes).
    assert world.backend.stopped == [world.key]
    assert world.gateway.cut == [world.key]


def test_shutdown_stops_every_builder(world: World) -> None:
    world.lease()
    world.run()
    asyncio.run(world.reconciler.shutdown())
    assert world.backend.stopped_all
    assert world.row()[0] == "stopped"


def test_leftovers_of_an_earlier_supervisor_are_reaped_and_marked_stopped(world: World) -> None:
    with world.store.transaction() as session:
        builder_service.set_state(session, world.project_id, PLATFORM, BuilderState.RUNNING, pid=99)
    asyncio.run(reap_leftovers(world.store, world.backend))
    assert world.backend.reaped == [RecordedBuilder(world.project_id, PLATFORM, 99)]
    assert world.row()[0] == "stopped"


def test_a_wedged_builder_is_restarted_and_a_slow_answer_once_is_not_enough(world: World) -> None:
    now = world.running_on_a_clock()

    def tick() -> None:
        now[0] += 16  # past probe_seconds: every run probes

    # Answering: probed, kept.
    world.run_in_one_loop(4, tick)
    assert world.backend.probes >= 2
    assert world.row()[0] == "running"
    assert world.backend.stopped == []
    # Silent once, then answering again: kept (a loaded machine may be slow once).
    world.backend.silent.add(world.key)
    world.run_in_one_loop(1, tick)
    world.backend.silent.clear()
    world.run_in_one_loop(3, tick)
    assert world.row()[0] == "running"
    assert world.backend.stopped == []
    # Silent twice in a row: stopped (what it holds is cut), and the lease still wanting it starts a new one.
    # Its cache is not sampled on the way out: `buildctl du` would hang on it too.
    sampled = world.backend.sampled
    world.backend.silent.add(world.key)
    world.run_in_one_loop(4, tick)
    assert world.backend.stopped == [world.key]
    assert world.backend.sampled == sampled
    assert world.gateway.cut == [world.key]
    assert len(world.backend.started) == 2
    assert world.row()[0] in ("starting", "running")


def test_a_cache_sample_that_never_answers_holds_up_no_run_and_goes_with_its_builder(tmp_path: Path) -> None:
    with world_of(tmp_path, kept_up(sample_seconds=10)) as world:
        now = world.running_on_a_clock()
        world.backend.silent.add(world.key)  # wedged: ListWorkers and du never answer

        def tick() -> None:
            now[0] += 16  # past probe_seconds and sample_seconds: every run probes and wants a sample

        async def runs() -> float:
            started = asyncio.get_running_loop().time()
            for _ in range(4):
                await world.reconciler.run_once()
                await asyncio.sleep(0)
                tick()
            return asyncio.get_running_loop().time() - started

        took = asyncio.run(runs())
        assert took < 5, f"the reconciler waited {took:.1f} s on a sample"
        # Seen wedged and stopped, though its sample never came back; the sample went with it.
        assert world.backend.stopped == [world.key]
        assert world.backend.sampled >= 1 and world.backend.samples_cut == world.backend.sampled


def test_a_builders_cache_is_relieved_once_after_its_builds_and_never_during_one(tmp_path: Path) -> None:
    with world_of(tmp_path, kept_up(sample_seconds=3600)) as world:
        world.backend.answering.add(world.key)
        first = world.lease()
        world.run_in_one_loop(4, lambda: None)
        assert world.row()[0] == "running"
        assert world.backend.relieved == []  # a build holds it: BuildKit may be writing
        world.release(first)
        world.run_in_one_loop(4, lambda: None)
        assert world.backend.relieved == [world.key]  # once, however many passes follow
        assert world.backend.stopped == []
        second = world.lease()
        world.run_in_one_loop(2, lambda: None)
        world.release(second)
        world.run_in_one_loop(3, lambda: None)
        assert world.backend.relieved == [world.key, world.key]


class FakeConnectedBuilds:
    def __init__(self, connected: set[tuple[str, str]]) -> None:
        self.connected = connected
        self.cut: set[tuple[str, str]] = set()

    def connected_builds(self) -> set[tuple[str, str]]:
        return set(self.connected)

    def cut_builds(self, ended: set[tuple[str, str]]) -> None:
        self.cut |= ended


def test_every_node_cuts_its_connections_of_builds_whose_lease_ended(world: World) -> None:
    live, ended = world.lease(), world.lease()
    world.release(ended)
    gateway = FakeConnectedBuilds({(live, PLATFORM), (ended, PLATFORM), ("bcdfghjklm", PLATFORM)})
    asyncio.run(GatewayLeaseWatch(world.store, gateway).run_once())
    assert gateway.cut == {(ended, PLATFORM), ("bcdfghjklm", PLATFORM)}
    # Nothing connected: the store is not even asked.
    idle = FakeConnectedBuilds(set())
    asyncio.run(GatewayLeaseWatch(world.store, idle).run_once())
    assert idle.cut == set()


def test_an_idle_tick_does_not_wait_for_the_write_lock_and_a_due_one_does(world: World) -> None:
    """Another process's write transaction (its flock on the SQLite file) does not hold up a tick with
    nothing to reap; a tick that has a build to end waits for it, then ends the build."""
    assert world.store.write_lock is not None
    with world.store.transaction() as session:  # a build that has not taken its lease yet: not due
        build, _secret = builds.create_build(session, world.admin, world.project_id, [])
    other_process = WriteLock(world.store.write_lock.path)  # its own open file: flock conflicts
    assert other_process.acquire_now()
    held = True
    try:

        async def ticks() -> bool:
            nonlocal held
            try:
                await asyncio.wait_for(world.reconciler.run_once(), 2)  # idle: done without the lock
            except TimeoutError:
                other_process.release()  # lets the stuck tick's thread finish before the loop closes
                held = False
                raise AssertionError("an idle tick waited for another process's write lock") from None
            # Now the build, held by nobody since the (zero) lease timeout, is due to end.
            world.reconciler.settings = dataclasses.replace(
                world.reconciler.settings, lease_timeout=timedelta(0)
            )
            tick = asyncio.ensure_future(world.reconciler.run_once())
            await asyncio.sleep(0.3)
            waited = not tick.done()
            other_process.release()
            held = False
            await asyncio.wait_for(tick, 5)
            return waited

        assert asyncio.run(ticks())
    finally:
        if held:
            other_process.release()
        other_process.close()
    with world.store.transaction() as session:
        ended = build_queries.get(session, build.id)
        assert ended is not None and ended.status == "error" and "abandoned" in (ended.error or "")


class Tenants:
    """Several organizations and projects on one reconciler with caps; builders stay up when idle (an hour),
    so that only the caps make them give their place up."""

    def __init__(self, store: Store, max_builders_per_org: int = 0, max_builders: int = 0) -> None:
        settings = ReconcilerSettings(
            lease_timeout=timedelta(minutes=5),
            idle_timeout=timedelta(hours=1),
            sample_seconds=3600,
            max_builders_per_org=max_builders_per_org,
            max_builders=max_builders,
        )
        self.world = World(store, settings)
        self.store = store
        self.ticks = 0.0
        self.world.reconciler.clock = lambda: self.ticks
        self.admins: dict[str, Principal] = {}

    def project(self, org_name: str, name: str) -> str:
        with self.store.transaction() as session:
            if org_name not in self.admins:
                org = organizations.create_organization(session, org_name)
                self.admins[org_name] = Principal(
                    kind=TokenKind.ORGANIZATION, token_id="t", organization_id=org.id
                )
            project = project_of(session, self.admins[org_name], name)
            return project.id

    def lease(self, org_name: str, project_id: str) -> str:
        with self.store.transaction() as session:
            build, _secret = builds.create_build(session, self.admins[org_name], project_id, [])
            builds.acquire(session, self.admins[org_name], build.id, PLATFORM)
            return build.id

    def release(self, org_name: str, build_id: str) -> None:
        with self.store.transaction() as session:
            builds.release(session, self.admins[org_name], build_id, PLATFORM)

    def run(self) -> None:
        self.ticks += 1
        self.world.run()

    def started(self) -> list[str]:
        return [spec.project_id for spec in self.world.backend.started]

    def stopped(self) -> list[str]:
        return [project for project, _platform in self.world.backend.stopped]


def test_an_organization_runs_at_most_its_cap_and_an_idle_builder_makes_room(tmp_path: Path) -> None:
    """A tenant with an organization token can make any number of projects and start a builder in each:
    200 buildkitd processes on the host. Past --max-builders-per-org a build waits (GetBuildKitConnection
    stays pending); another organization is not held back; an idle builder of the organization is stopped to
    make room, and the longest waiting goes first."""
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        t = Tenants(store, max_builders_per_org=2)
        a, b, c, d = (t.project("hostile", n) for n in ("a", "b", "c", "d"))
        other = t.project("neighbour", "x")
        held_a, _held_b = t.lease("hostile", a), t.lease("hostile", b)
        t.run()
        assert sorted(t.started()) == sorted([a, b])
        t.lease("hostile", c)
        t.run()
        t.lease("hostile", d)
        t.lease("neighbour", other)
        t.run()
        t.run()
        assert sorted(t.started()) == sorted([a, b, other])  # c and d wait; the neighbour does not
        with store.transaction() as session:
            waiting = builder_queries.get(session, c, PLATFORM)
            assert waiting is None or waiting.state == "stopped"
        t.release("hostile", held_a)
        t.run()
        assert t.stopped() == [a]  # idle, within the same cap: it gives its place up (its cache stays)
        assert t.started()[-1] == c  # c waited longer than d
        t.run()
        assert d not in t.started()
    finally:
        store.dispose()


def test_the_server_wide_cap_holds_every_organization_back(tmp_path: Path) -> None:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        t = Tenants(store, max_builders=1)
        first, second = t.project("one", "a"), t.project("two", "b")
        held = t.lease("one", first)
        t.run()
        t.lease("two", second)
        t.run()
        assert t.started() == [first]
        t.release("one", held)
        t.run()
        assert t.stopped() == [first]
        assert t.started() == [first, second]
    finally:
        store.dispose()


def test_without_caps_every_wanted_builder_starts(tmp_path: Path) -> None:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    try:
        t = Tenants(store)
        made = [t.project("one", f"p{i}") for i in range(20)]
        for project in made:
            t.lease("one", project)
        t.run()
        assert sorted(t.started()) == sorted(made)
    finally:
        store.dispose()
