"""The supervisor's composition root: the singular services of a server, run once beside the API workers —
the builder reconciler, the BuildKit gateway with its step recorder, and the registry process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from opendepot.builders.local import LocalBuildkitd
from opendepot.builders.reconciler import BuilderReconciler, ReconcilerSettings, reap_leftovers
from opendepot.builders.sandbox import Sandbox
from opendepot.builds import queries as build_queries
from opendepot.gateway.listener import Gateway
from opendepot.gateway.recorder import StepRecorder
from opendepot.pki.authority import Authority
from opendepot.projects import queries as project_queries
from opendepot.registry.process import ProcessSettings, RegistryProcess
from opendepot.store import Store

from .config import Config
from .loops import Loops
from .worker import open_registry


def insecure_registries(config: Config) -> tuple[str, ...]:
    """Builders push to our own registry over plain HTTP when the advertised host is its listen address."""
    if config.registry.binary and config.registry.host == f"{config.registry.url.split('://', 1)[1]}":
        return (config.registry.host,)
    return ()


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
    sandbox = Sandbox(
        config.server.data_dir,
        config.builders.buildkitd,
        registry_endpoints=[_split_endpoint(host) for host in registries],
        pids_max=config.builders.pids_max,
        rootlesskit=config.builders.rootlesskit,
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


@contextlib.asynccontextmanager
async def builder_services(config: Config) -> AsyncIterator[BuilderReconciler]:
    """The singular parts of the server: the machine manager and the BuildKit gateway."""
    sandbox = await asyncio.to_thread(open_sandbox, config)
    store = Store(config.store.database_url)
    backend = LocalBuildkitd(config.builders.buildkitd, config.paths, insecure_registries(config), sandbox)
    await reap_leftovers(store, backend)

    async def lease_is_live(project_id: str, build_id: str, platform: str) -> bool:
        return await store.read(lambda s: build_queries.lease_is_live(s, project_id, build_id, platform))

    recorder = StepRecorder(store, log_cap=config.gateway.build_log_limit_mib << 20)
    gateway = Gateway(
        Authority(config.paths.pki),
        backend.open,
        lease_is_live,
        recorder if config.gateway.status_tap else None,
    )
    host, port = config.gateway.host_port
    await gateway.start(host, port)
    manager = BuilderReconciler(
        store,
        backend,
        gateway,
        ReconcilerSettings(
            lease_timeout=timedelta(seconds=config.builders.lease_timeout),
            idle_timeout=timedelta(seconds=config.builders.idle_timeout),
            sample_seconds=config.builders.usage_sample_seconds,
        ),
    )
    loops = Loops()
    loops.start(manager)
    loops.start(recorder)
    if sandbox is not None:
        loops.start(DeletedProjectsJanitor(sandbox, store, config))
    registry_process = None
    if (registry := open_registry(config, store)) is not None:
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
        )
        await registry_process.start()
        loops.start(registry_process)
    try:
        yield manager
    finally:
        # The order matters: no loop may run against what is being closed; the last steps get written
        # before the gateway drops the connections; builders stop before the registry they push to.
        await loops.stop()
        await recorder.flush()
        await gateway.close()
        await manager.shutdown()
        if registry_process is not None:
            await registry_process.stop()
        if sandbox is not None:
            await asyncio.to_thread(sandbox.close)
        store.dispose()
