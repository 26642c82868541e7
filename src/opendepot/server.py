"""`opendepot serve`: the store, the ASGI app, and Hypercorn on one port for HTTP/1.1, h2c and h2."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from sqlalchemy import text

from opendepot.api.app import Router, connect_apps, method_paths
from opendepot.api.auth import Authenticator
from opendepot.api.deps import Deps
from opendepot.api.interceptor import configure_logging
from opendepot.bootstrap import bootstrap
from opendepot.config import Config
from opendepot.projects.caches import ProjectCaches
from opendepot.projects.service import Settings as ProjectSettings
from opendepot.store import Store

log = logging.getLogger("opendepot.server")


def build_app(config: Config, store: Store) -> Router:
    deps = Deps(
        store=store,
        authn=Authenticator(store),
        caches=ProjectCaches(config.data_dir / "projects"),
        project_settings=ProjectSettings(regions=config.regions, default_region=config.default_region),
    )

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

    return Router(connect_apps(deps), method_paths(), healthy)


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
    hc.h2_max_concurrent_streams = 1000
    hc.h11_max_incomplete_size = 64 * 1024
    if config.tls_cert and config.tls_key:
        hc.certfile = str(config.tls_cert)
        hc.keyfile = str(config.tls_key)
        hc.alpn_protocols = ["h2", "http/1.1"]
    return hc


async def _serve(config: Config) -> None:
    store = Store.open(config.database_url, config.data_dir)
    bootstrap(store, config.data_dir)
    app = build_app(config, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheme = "https" if config.tls_cert else "http"
    host, port = config.host_port
    print(f"opendepot: serving the Depot API on {scheme}://{host}:{port} (data in {config.data_dir})",
          file=sys.stderr, flush=True)
    try:
        await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    finally:
        store.dispose()


def serve(config: Config) -> None:
    configure_logging(config.log_level)
    asyncio.run(_serve(config))
