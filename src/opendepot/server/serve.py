"""`opendepot serve`: prepare the data dir and the store, then hand over to the supervisor."""

from __future__ import annotations

import faulthandler
import sys

from opendepot import metrics
from opendepot.files import private_from_now_on
from opendepot.logs import configure_logging
from opendepot.registry.keys import TokenSigner
from opendepot.sealed.box import WrongSecretKey
from opendepot.store import Store

from .bootstrap import bootstrap
from .config import Config
from .supervisor import serve_workers
from .worker import open_vault, opendepot_app


def _prepare(config: Config) -> None:
    store = Store.open(config.store.database_url, config.data_dir)
    try:
        try:
            vault = open_vault(config, store, create_key=True)
            vault.check_key()
        except (OSError, ValueError, WrongSecretKey) as exc:
            raise SystemExit(f"opendepot: {exc}") from None
        bootstrap(store, config.paths)
        if config.registry.binary:
            # Made once among all nodes (or imported from this data dir's files of an older version).
            TokenSigner(vault, config.paths.registry).write_cert()
    finally:
        store.dispose()


def serve(config: Config) -> None:
    private_from_now_on()
    faulthandler.enable()
    configure_logging(config.server.log_level)
    _prepare(config)
    metrics.prepare(config.paths.metrics)
    scheme = "https" if config.api.tls_cert else "http"
    host, port = config.api.host_port
    print(
        f"opendepot: serving the Depot API on {scheme}://{host}:{port} "
        f"with {config.server.workers} worker(s) (data in {config.data_dir})",
        file=sys.stderr,
        flush=True,
    )
    serve_workers(config, opendepot_app, builders=True)
