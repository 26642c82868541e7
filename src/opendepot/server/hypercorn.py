"""Hypercorn's settings for the API: long-lived streams, many requests per connection, h2 by ALPN on TLS."""

from __future__ import annotations

from hypercorn.config import Config as HypercornConfig

from .config import Config


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    host, port = config.api.host_port
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
    if config.api.tls_cert and config.api.tls_key:
        hc.certfile = str(config.api.tls_cert)
        hc.keyfile = str(config.api.tls_key)
        hc.alpn_protocols = ["h2", "http/1.1"]
    return hc
