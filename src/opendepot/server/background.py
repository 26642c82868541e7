"""The supervisor's composition root: the singular services of a server, run once beside the API workers —
the builder reconciler, the BuildKit gateway with its step recorder, and the registry process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Protocol

from opendepot.builders.backend import Backend
from opendepot.builders.buildctl import buildctl_beside
from opendepot.builders.kubernetes import KubernetesBuildkitd, PruneDeletedProjects
from opendepot.builders.kubernetes import KubernetesSettings as PodSettings
from opendepot.builders.local import LocalBuildkitd
from opendepot.builders.reconciler import BuilderReconciler, ReconcilerSettings, reap_leftovers
from opendepot.builders.sandbox import Sandbox
from opendepot.builds import queries as build_queries
from opendepot.builds import service as build_service
from opendepot.clock import utcnow
from opendepot.gateway.listener import Gateway, MemoryWatcher
from opendepot.gateway.recorder import MemoryWatch, StepRecorder
from opendepot.pki.authority import Authority
from opendepot.projects import queries as project_queries
from opendepot.registry.mirror import MirrorProcess, MirrorSettings
from opendepot.registry.process import ProcessSettings, RegistryProcess
from opendepot.store import Store

from .config import Config
from .gauges import StoreGauges
from .loops import Loops
from .retention import BuildRetention
from .singular import Gated, SingularLease
from .worker import open_registry, open_vault

log = logging.getLogger("opendepot.server")


def mirror_settings(config: Config) -> MirrorSettings | None:
    if not config.registry.mirror:
        return None
    return MirrorSettings(
        config.registry.binary, config.registry.mirror, config.registry.mirror_listen, config.paths
    )


async def start_mirror(settings: MirrorSettings | None, loops: Loops) -> MirrorProcess | None:
    """The pull-through cache, when --registry-mirror asks for one, with its supervision loop."""
    if settings is None:
        return None
    process = MirrorProcess(settings)
    await process.start()
    loops.start(process)
    return process


def insecure_registries(config: Config) -> tuple[str, ...]:
    """Builders push to our own registry over plain HTTP when the advertised host is its listen address."""
    if config.registry.binary and config.registry.host == f"{config.registry.url.split('://', 1)[1]}":
        return (config.registry.host,)
    return ()


def kubernetes_backend(config: Config, authority: Authority) -> KubernetesBuildkitd:
    settings = config.kubernetes
    _host, colon, port = config.registry.host.rpartition(":")
    insecure = insecure_registries(config)
    # The port a builder dials; a host without one is 443 (80 for a plain-HTTP registry). Always named:
    # without it the builders' egress rule opened every port of the registry's addresses.
    registry_port = int(port) if colon and port.isascii() and port.isdigit() else (80 if insecure else 443)
    return KubernetesBuildkitd(
        PodSettings(
            kubeconfig=settings.kubeconfig,
            namespace=settings.namespace,
            image=settings.image,
            storage_class=settings.storage_class,
            gateway_cidrs=settings.gateway_cidrs,
            registry_cidrs=settings.registry_cidrs,
            registry_port=registry_port,
            insecure_registries=insecure,
            pids_max=config.builders.pids_max,
            disk_max_bytes=config.builders.disk_max_mib << 20,
            buildctl=buildctl_beside(config.builders.buildkitd),
        ),
        authority,
    )


class ReconcilerDuty:
    """The builder reconciler as a singular duty: a fresh one each time this node takes the duties over
    (its memory of starting and running builders is only valid while it holds them)."""

    name = "builder reconciler"

    def __init__(self, make: Callable[[], BuilderReconciler]) -> None:
        self.make = make
        self.current: BuilderReconciler | None = None

    @property
    def interval(self) -> float:
        return self.current.interval if self.current is not None else 0.2

    def renew(self) -> None:
        self.current = self.make()

    async def run_once(self) -> None:
        if self.current is not None:
            await self.current.run_once()

    async def shutdown(self) -> None:
        """Stops the builders this node runs (their caches stay); the next holder starts them again."""
        if self.current is not None:
            current, self.current = self.current, None
            await current.shutdown()


def open_sandbox(config: Config) -> Sandbox | None:
    """The builders' sandbox, or None with --unsafe-builders (said loudly at every start). A host that
    cannot sandbox them stops the server here: builders are never silently downgraded."""
    if config.builders.unsafe_builders:
        logging.getLogger("opendepot.builders").warning(
            "UNSAFE BUILDERS: --unsafe-builders is set; buildkitd and every RUN step run as host root on the "
            "host network and can read this server's traffic and reach every local service. Never run "
            "untrusted code like this."
        )
        return None
    registries = insecure_registries(config) or (config.registry.listen,)
    if config.registry.mirror:
        # Builders pull through the cache: the sandbox lets them reach it as it lets them reach the registry.
        registries = (*registries, config.registry.mirror_listen)
    sandbox = Sandbox(
        config.server.data_dir,
        config.builders.buildkitd,
        registry_endpoints=[_split_endpoint(host) for host in registries],
        pids_max=config.builders.pids_max,
        rootlesskit=config.builders.rootlesskit,
        disk_max_bytes=config.builders.disk_max_mib << 20,
    )
    if problems := sandbox.problems():
        raise SystemExit(
            "opendepot: builders cannot be sandboxed on this host: "
            + "; ".join(problems)
            + ". Fix that (./dev setup installs what is missing), or pass --unsafe-builders to run them as "
            "host root on the host network (never for untrusted code)."
        )
    sandbox.open()
    return sandbox


def _split_endpoint(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host.strip("[]"), int(port)


class DeletedProjectsJanitor:
    """Builder users own their project's cache; once the project is deleted, they go too."""

    name = "builder users of deleted projects"
    interval = 30.0

    def __init__(self, sandbox: Sandbox, store: Store, config: Config) -> None:
        self.sandbox = sandbox
        self.store = store
        self.config = config

    def _existing(self, project_ids: list[str]) -> set[str]:
        with self.store.transaction() as session:
            return project_queries.existing_ids(session, project_ids)

    async def run_once(self) -> None:
        await asyncio.to_thread(
            self.sandbox.forget_deleted_projects, self._existing, self.config.paths.builder_state
        )


class ConnectedBuilds(Protocol):
    """What the lease watch asks of a gateway (gateway/listener.py)."""

    def connected_builds(self) -> set[tuple[str, str]]: ...
    def cut_builds(self, ended: set[tuple[str, str]]) -> None: ...


class GatewayLeaseWatch:
    """Every node's gateway cuts the connections of builds whose lease ended, whichever node's API ended it:
    the holder's reconciler cuts only its own gateway's (`keep_only`), so each node polls the store for the
    builds connected through it, and only while some are."""

    name = "gateway lease watch"
    interval = 1.0

    def __init__(self, store: Store, gateway: ConnectedBuilds) -> None:
        self.store = store
        self.gateway = gateway

    async def run_once(self) -> None:
        connected = self.gateway.connected_builds()
        if not connected:
            return
        live = await self.store.read(lambda s: build_queries.live_among(s, connected))
        self.gateway.cut_builds(connected - live)


def memory_watcher(backend: Backend) -> MemoryWatcher:
    """How the gateway reads a local builder's memory cgroup for a build (pods: their cluster's business)."""

    async def watch(project_id: str, build_id: str, platform: str, hardware: str) -> MemoryWatch | None:
        cgroup = backend.memory_watch(project_id, platform) if isinstance(backend, LocalBuildkitd) else None
        if cgroup is None:
            return None
        oom_kills, limit = cgroup
        return MemoryWatch(oom_kills, limit, hardware)

    return watch


@contextlib.asynccontextmanager
async def builder_services(config: Config) -> AsyncIterator[ReconcilerDuty]:  # noqa: PLR0915 - composition root
    """The singular parts of the server: the machine manager and the BuildKit gateway."""
    store = Store(config.store.database_url)
    vault = open_vault(config, store)
    authority = Authority(config.paths.pki, vault)
    mirror = mirror_settings(config)
    backend: Backend
    sandbox: Sandbox | None = None
    if config.kubernetes.backend == "kubernetes":
        # Pods are sandboxed by the cluster (builders/kubernetes.py), not by this host.
        backend = kubernetes_backend(config, authority)
    else:
        sandbox = await asyncio.to_thread(open_sandbox, config)
        backend = LocalBuildkitd(
            config.builders.buildkitd,
            config.paths,
            insecure_registries(config),
            sandbox,
            {mirror.upstream_host: mirror.listen} if mirror else None,
            memory_cap_bytes=config.builders.memory_limit_mib << 20 or None,
        )

    async def live_lease(project_id: str, build_id: str, platform: str) -> str | None:
        return await store.read_lookup(
            lambda c: build_queries.live_lease_hardware(c, project_id, build_id, platform)
        )

    recorder = StepRecorder(store, log_cap=config.gateway.build_log_limit_mib << 20)
    gateway = Gateway(
        authority,
        backend.connect_socket,
        live_lease,
        recorder if config.gateway.status_tap else None,
        memory_watcher(backend),
        # Pod builders are reached over TLS from this process: their connections stay in its relay hub.
        separate_process=config.gateway.separate_process and isinstance(backend, LocalBuildkitd),
    )
    host, port = config.gateway.host_port
    await gateway.start(host, port)
    settings = ReconcilerSettings(
        lease_timeout=timedelta(seconds=config.builders.lease_timeout),
        idle_timeout=timedelta(seconds=config.builders.idle_timeout),
        sample_seconds=config.builders.usage_sample_seconds,
        build_timeout=timedelta(seconds=config.builders.build_timeout)
        if config.builders.build_timeout > 0
        else None,
        max_builders_per_org=config.builders.max_builders_per_org,
        max_builders=config.builders.max_builders,
    )
    reconciler = ReconcilerDuty(lambda: BuilderReconciler(store, backend, gateway, settings))

    node_started = utcnow()

    async def take_over() -> None:
        # What an earlier holder left running is stopped, then a fresh reconciler takes over from the rows.
        await reap_leftovers(store, backend)
        # Builds that held those builders cannot finish: they end now, with a reason.
        interrupted = await store.run(lambda s: build_service.interrupt_building(s, node_started))
        if interrupted:
            log.warning("%d build(s) cut off by the previous holder's end marked failed", interrupted)
        reconciler.renew()

    singular = SingularLease(store, take_over, reconciler.shutdown)
    await singular.run_once()  # a lone node holds the duties before it serves its first build
    loops = Loops()
    loops.start(singular)
    if isinstance(backend, KubernetesBuildkitd):

        async def project_ids() -> set[str]:
            return set(await store.read(project_queries.all_ids))

        loops.start(Gated(PruneDeletedProjects(backend, project_ids), singular))
    loops.start(Gated(reconciler, singular))
    loops.start(Gated(StoreGauges(store, config.kubernetes.backend), singular))
    retention_days = config.builders.build_retention_days
    history_mib = config.builders.build_history_quota_mib
    if retention_days > 0 or history_mib > 0:
        retention = timedelta(days=retention_days) if retention_days > 0 else None
        loops.start(Gated(BuildRetention(store, retention, history_mib << 20), singular))
    loops.start(recorder)
    loops.start(GatewayLeaseWatch(store, gateway))
    if sandbox is not None:
        loops.start(DeletedProjectsJanitor(sandbox, store, config))
    registry_process = None
    if (registry := open_registry(config, store, vault)) is not None:
        registry_process = RegistryProcess(
            ProcessSettings(
                binary=config.registry.binary,
                listen=config.registry.listen,
                paths=config.paths,
                realm=f"{config.api.public_url}/registry/token",
                events_url=f"{config.api.url}/registry/events",
                storage=config.registry.storage,
                gc_idle=timedelta(seconds=config.registry.gc_idle_seconds),
            ),
            registry.signer,
            store,
            registry.client,
            gc_allowed=singular.holding,
        )
        await registry_process.start()
        loops.start(registry_process)
    mirror_process = await start_mirror(mirror, loops)
    try:
        yield reconciler
    finally:
        # The order matters: no loop may run against what is being closed; the last steps get written
        # before the gateway drops the connections; builders stop before the registry they push to.
        await loops.stop()
        await recorder.flush()
        await gateway.close()
        await reconciler.shutdown()
        await singular.release()
        if registry_process is not None:
            await registry_process.stop()
        if sandbox is not None:
            await asyncio.to_thread(sandbox.close)
        if mirror_process is not None:
            await mirror_process.stop()
        store.dispose()
