"""The API worker's composition root: everything one `--workers` process needs to answer calls.

API workers keep no state of their own beyond connection pools: everything they know is in the store, so
any worker can answer any call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from opendepot.api.auth import Authenticator
from opendepot.api.deps import Deps
from opendepot.api.guard import DrainBeforeAnswering, Guard, Limits
from opendepot.api.http.asgi import Receive, Scope, Send
from opendepot.api.http.login_page import LoginPage
from opendepot.api.http.registry import RegistryEndpoints
from opendepot.api.http.router import HttpHandler, Router
from opendepot.api.http.shared_page import shared_build_page
from opendepot.api.rpc.cli.v1beta1.login import LoginService
from opendepot.api.rpc.services import connect_apps, method_paths, request_stream_paths
from opendepot.builders.access import BuilderAccess
from opendepot.builders.reset import BuilderReset
from opendepot.builds import service as builds
from opendepot.dashboard.app import Dashboard
from opendepot.datadir import DataDir
from opendepot.metrics import exposition
from opendepot.oidc.verifier import OidcVerifier
from opendepot.pki.authority import Authority
from opendepot.projects.lifecycle import ProjectLifecycle
from opendepot.projects.service import Settings as ProjectSettings
from opendepot.registry.keys import TokenSigner
from opendepot.registry.operations import Registry
from opendepot.registry.operations import RegistrySettings as RegistryClientSettings
from opendepot.registry.storage import filesystem_root
from opendepot.sealed.box import load_key
from opendepot.sealed.vault import Vault
from opendepot.store import Store

from .config import Config

log = logging.getLogger("opendepot.server")


async def metrics_endpoint(_scope: Scope, _receive: Receive, send: Send) -> None:
    """Prometheus text format: the samples of the supervisor and every API worker (metrics.py)."""
    body, content_type = await asyncio.to_thread(exposition)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(config: Config, store: Store) -> HttpHandler:
    vault = open_vault(config, store)
    authority = Authority(config.paths.pki, vault)
    registry = open_registry(config, store, vault)
    deps = Deps(
        store=store,
        authn=Authenticator(
            store,
            OidcVerifier(config.oidc.issuers, config.oidc.audiences) if config.oidc.issuers else None,
            timedelta(seconds=config.oidc.replay_window_seconds),
        ),
        lifecycle=ProjectLifecycle(store, BuilderReset(config.paths, store), authority),
        project_settings=ProjectSettings(
            regions=config.projects.regions, default_region=config.projects.default_region
        ),
        public_url=config.api.public_url,
        authority=authority,
        registry=registry,
        build_log_limit_bytes=config.gateway.build_log_limit_mib << 20,
        builds_per_minute=config.builders.max_builds_per_minute,
    )
    gateway_port = config.gateway.host_port[1]
    machines = BuilderAccess(store, authority, config.gateway.host, gateway_port)

    async def healthy() -> bool:
        try:
            return await asyncio.to_thread(store.ping)
        except Exception:
            log.exception("health check failed")
            return False

    async def shared_page(secret: str) -> str | None:
        found = await store.read(lambda s: builds.shared(s, secret))
        return None if found is None else shared_build_page(*found)

    routes: dict[str, HttpHandler] = {"/login/": LoginPage(deps), "/metrics": metrics_endpoint}
    if registry is not None:
        endpoints = RegistryEndpoints(deps.authn, registry)
        routes.update({"/registry/token": endpoints.token, "/registry/events": endpoints.events})
    login = LoginService(deps, timedelta(seconds=config.login.timeout_seconds))
    # A build's status stream may stay quiet as long as the build may run.
    idle = config.builders.build_timeout or None
    guard = Guard(deps.authn.from_header, Limits(stream_idle_timeout=idle), request_stream_paths())
    api = Router(connect_apps(deps, machines, login), method_paths(), healthy, shared_page, routes, guard)
    return DrainBeforeAnswering(Dashboard(deps, api))


def open_vault(config: Config, store: Store, *, create_key: bool = False) -> Vault:
    """The store's sealed secrets, with this node's secret key. Only `serve` makes the key, and only at its
    default place in the data dir (a single node): a key the operator names must exist."""
    create = create_key and config.sources.get("secret_key_file", "default") == "default"
    return Vault(store, load_key(config.store.secret_key, config.store.secret_key_file, create=create))


def open_registry(config: Config, store: Store, vault: Vault) -> Registry | None:
    if not config.registry.binary:
        return None
    settings = RegistryClientSettings(
        host=config.registry.host,
        url=config.registry.url,
        quota_bytes=config.registry.quota_mib << 20,
        quota_blobs=config.registry.quota_blobs,
        storage_root=filesystem_root(config.registry.storage, DataDir(config.data_dir).registry_storage),
    )
    return Registry(store, settings, TokenSigner(vault, config.paths.registry))


def opendepot_app(config: Config) -> tuple[Any, Callable[[], None]]:
    """The app factory `serve` runs in each worker process."""
    store = Store(config.store.database_url, inline_writes=True)
    return build_app(config, store), store.dispose
