"""`opendepot serve`.

The process that starts is the supervisor: it migrates the store, bootstraps, checks that the port is free
(so a busy port fails loudly), then runs the API in `--workers` processes. Each worker binds the port with
SO_REUSEPORT, so the kernel spreads connections evenly (a shared accept socket lets one busy worker take
them all).
API workers keep no state of their own beyond connection pools: everything they know is in the store, so
any worker can answer any call. (Later, singular things such as the machine manager live in the supervisor.)
Each worker is Hypercorn serving one ASGI app: HTTP/1.1 and h2c on the cleartext port, h2 by ALPN on TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import logging
import multiprocessing
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import timedelta
from multiprocessing.synchronize import Event as EventType
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.utils import wrap_app
from sqlalchemy import text

from opendepot.api.app import HttpHandler, Router, connect_apps, method_paths
from opendepot.api.auth import Authenticator
from opendepot.api.deps import Deps
from opendepot.api.interceptor import configure_logging
from opendepot.api.login import LoginPage, LoginService
from opendepot.api.pages import shared_build_page
from opendepot.api.registry_http import RegistryEndpoints
from opendepot.bootstrap import bootstrap
from opendepot.builders.access import BuilderAccess
from opendepot.builders.local import LocalBuildkitd, reap_orphans
from opendepot.builders.reconciler import BuilderReconciler, ReconcilerSettings
from opendepot.builders.reset import BuilderReset
from opendepot.builds import queries as build_queries
from opendepot.builds import service as builds
from opendepot.config import Config
from opendepot.gateway.listener import Gateway
from opendepot.gateway.recorder import StepRecorder
from opendepot.oidc.verifier import OidcVerifier
from opendepot.pki.authority import Authority
from opendepot.projects.service import Settings as ProjectSettings
from opendepot.registry.keys import TokenSigner, ensure_keys
from opendepot.registry.operations import Registry, RegistrySettings
from opendepot.registry.process import ProcessSettings, RegistryProcess
from opendepot.store import Store

log = logging.getLogger("opendepot.server")


def build_app(config: Config, store: Store) -> Router:
    authority = Authority(config.data_dir / "pki")
    registry = open_registry(config, store)
    deps = Deps(
        store=store,
        authn=Authenticator(
            store,
            OidcVerifier(config.oidc_issuers, config.oidc_audiences) if config.oidc_issuers else None,
            timedelta(seconds=config.oidc_replay_window_seconds),
        ),
        caches=BuilderReset(config.data_dir / "projects", store),
        project_settings=ProjectSettings(regions=config.regions, default_region=config.default_region),
        public_url=config.public_url,
        authority=authority,
        registry=registry,
    )
    gateway_port = config.buildkit_host_port[1]
    machines = BuilderAccess(store, authority, config.buildkit_host, gateway_port)

    async def healthy() -> bool:
        def ping() -> bool:
            with store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True

        try:
            return await asyncio.to_thread(ping)
        except Exception:
            log.exception("health check failed")
            return False

    async def shared_page(secret: str) -> str | None:
        found = await store.read(lambda s: builds.shared(s, secret))
        return None if found is None else shared_build_page(*found)

    routes: dict[str, HttpHandler] = {"/login/": LoginPage(deps)}
    if registry is not None:
        endpoints = RegistryEndpoints(deps.authn, registry)
        routes.update({"/registry/token": endpoints.token, "/registry/events": endpoints.events})
    login = LoginService(deps, timedelta(seconds=config.login_timeout_seconds))
    return Router(connect_apps(deps, machines, login), method_paths(), healthy, shared_page, routes)


def open_registry(config: Config, store: Store) -> Registry | None:
    if not config.registry:
        return None
    settings = RegistrySettings(host=config.registry_host, url=config.registry_url)
    return Registry(store, settings, TokenSigner(config.data_dir / "registry"))


def insecure_registries(config: Config) -> tuple[str, ...]:
    """Builders push to our own registry over plain HTTP when the advertised host is its listen address."""
    if config.registry and config.registry_host == f"{config.registry_url.split('://', 1)[1]}":
        return (config.registry_host,)
    return ()


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    host, port = config.host_port
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = "-"
    hc.loglevel = "WARNING"
    # Status streams and login streams stay open for a whole build or until approval.
    hc.read_timeout = None
    hc.keep_alive_timeout = 75
    # Hypercorn closes a connection (GOAWAY) after this many requests; clients reconnect, but a busy
    # sdk-node process should not have to every thousand calls.
    hc.keep_alive_max_requests = 1_000_000
    hc.h2_max_concurrent_streams = 1000
    hc.h11_max_incomplete_size = 64 * 1024
    if config.tls_cert and config.tls_key:
        hc.certfile = str(config.tls_cert)
        hc.keyfile = str(config.tls_key)
        hc.alpn_protocols = ["h2", "http/1.1"]
    return hc


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM if the supervisor dies, so that no worker outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


# An app factory runs in each worker: it returns the ASGI app and what to close when the worker stops.
AppFactory = Callable[[Config], tuple[Any, Callable[[], None]]]


def opendepot_app(config: Config) -> tuple[Any, Callable[[], None]]:
    store = Store(config.database_url)
    return build_app(config, store), store.dispose


async def _run_worker(
    config: Config,
    make_app: AppFactory,
    sockets: Sockets,
    stop: EventType | None,
    stopped: asyncio.Event | None = None,
) -> None:
    app, close = make_app(config)
    if stopped is None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)

    async def shutdown_trigger() -> None:
        while not stopped.is_set():
            if stop is not None and stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=0.25)

    try:
        hc = hypercorn_config(config)
        asgi = wrap_app(app, hc.wsgi_max_body_size, "asgi")
        await worker_serve(asgi, hc, sockets=sockets, shutdown_trigger=shutdown_trigger)
    finally:
        close()


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """uvloop where it is installed (it is a dependency on Linux): markedly less overhead per request."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def _worker_main(config: Config, make_app: AppFactory, stop: EventType) -> None:
    _die_with_parent()
    faulthandler.enable()  # a crash in native code leaves the Python stack in the log
    configure_logging(config.log_level)
    hc = hypercorn_config(config)
    hc.workers = config.workers  # makes Hypercorn set SO_REUSEPORT
    _run(_run_worker(config, make_app, hc.create_sockets(), stop))


def _check_port_free(hc: HypercornConfig) -> None:
    """Binding without SO_REUSEPORT fails if anything holds the port, even a group that set it."""
    hc.workers = 1
    sockets = hc.create_sockets()
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.close()


def _prepare(config: Config) -> None:
    store = Store.open(config.database_url, config.data_dir)
    try:
        bootstrap(store, config.data_dir)
    finally:
        store.dispose()
    if config.registry:
        ensure_keys(config.data_dir / "registry")


def serve(config: Config) -> None:
    faulthandler.enable()
    configure_logging(config.log_level)
    _prepare(config)
    scheme = "https" if config.tls_cert else "http"
    host, port = config.host_port
    print(
        f"opendepot: serving the Depot API on {scheme}://{host}:{port} with {config.workers} worker(s) "
        f"(data in {config.data_dir})",
        file=sys.stderr,
        flush=True,
    )
    serve_workers(config, opendepot_app, builders=True)


def serve_workers(config: Config, make_app: AppFactory, *, builders: bool = False) -> None:
    """Runs make_app's app in config.workers processes (in this process when there is one). With
    builders, this process also runs the machine manager and the BuildKit gateway."""
    _run(_supervise(config, make_app, builders))


async def _supervise(config: Config, make_app: AppFactory, builders: bool) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    async with contextlib.AsyncExitStack() as stack:
        if builders:
            await stack.enter_async_context(builder_services(config))
        hc = hypercorn_config(config)
        if config.workers == 1:
            await _run_worker(config, make_app, hc.create_sockets(), None, stopped)
            return
        _check_port_free(hc)
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        workers = [
            ctx.Process(target=_worker_main, args=(config, make_app, stop)) for _ in range(config.workers)
        ]
        for process in workers:
            process.start()
        # Any worker exiting on its own (a crash) stops the whole server rather than leaving it half-up.
        while not stopped.is_set() and all(w.is_alive() for w in workers):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=0.25)
        stop.set()
        for w in workers:
            await asyncio.to_thread(w.join, 15)
            if w.is_alive():
                w.kill()
                await asyncio.to_thread(w.join)
        crashed = [w.exitcode for w in workers if w.exitcode not in (0, None)]
        if crashed and not stopped.is_set():
            raise SystemExit(f"opendepot: a worker exited with code {crashed[0]}")


@contextlib.asynccontextmanager
async def builder_services(config: Config) -> AsyncIterator[BuilderReconciler]:
    """The singular parts of the server: the machine manager and the BuildKit gateway."""
    store = Store(config.database_url)
    backend = LocalBuildkitd(
        config.buildkitd, config.data_dir, config.data_dir / "projects", insecure_registries(config)
    )
    await asyncio.to_thread(reap_orphans, store, backend)

    async def lease_is_live(project_id: str, build_id: str, platform: str) -> bool:
        return await store.read(lambda s: build_queries.lease_is_live(s, project_id, build_id, platform))

    recorder = StepRecorder(store, log_cap=config.build_log_limit_mib << 20)
    gateway = Gateway(
        Authority(config.data_dir / "pki"),
        backend.open,
        lease_is_live,
        recorder if config.status_tap else None,
    )
    host, port = config.buildkit_host_port
    await gateway.start(host, port)
    manager = BuilderReconciler(
        store,
        backend,
        gateway,
        ReconcilerSettings(
            lease_timeout=timedelta(seconds=config.lease_timeout),
            idle_timeout=timedelta(seconds=config.builder_idle_timeout),
            sample_seconds=config.usage_sample_seconds,
        ),
    )
    background_tasks = [asyncio.create_task(manager.run()), asyncio.create_task(recorder.run())]
    registry_process = None
    if (registry := open_registry(config, store)) is not None:
        registry_process = RegistryProcess(
            ProcessSettings(
                binary=config.registry,
                listen=config.registry_listen,
                data_dir=config.data_dir,
                realm=f"{config.public_url}/registry/token",
                events_url=f"{config.api_url}/registry/events",
                storage=config.registry_storage,
                gc_idle=timedelta(seconds=config.registry_gc_idle_seconds),
            ),
            registry.signer,
            store,
            registry.client,
        )
        await registry_process.start()
        background_tasks.append(asyncio.create_task(registry_process.run()))
    try:
        yield manager
    finally:
        for background in background_tasks:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        await recorder.flush()
        await gateway.close()
        await manager.shutdown()
        if registry_process is not None:
            await registry_process.stop()
        store.dispose()
