"""Hypercorn's settings for the API: long-lived streams, many requests per connection, h2 by ALPN on TLS."""

from __future__ import annotations

from typing import Any

import h2.events
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.h2 import H2Protocol

from .config import Config


def tolerate_late_request_data() -> None:
    """Hypercorn 0.18 forgets an HTTP/2 stream once its response has ended; request DATA that arrives for it
    afterwards (a client still sending the body of a request the server already refused) raises KeyError
    in the connection's reader, which drops the whole connection and every other stream on it. Such DATA is
    only acknowledged (so the connection's flow-control window stays open) and otherwise dropped."""
    original = H2Protocol._handle_events
    if getattr(original, "opendepot_patched", False):
        return

    async def handle_events(self: H2Protocol, events: list[h2.events.Event]) -> None:
        # A stream opened earlier in the same batch exists only once its RequestReceived has been handled.
        opening = {e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)}
        kept: list[h2.events.Event] = []
        for event in events:
            if (
                isinstance(event, h2.events.DataReceived)
                and event.stream_id not in self.streams
                and event.stream_id not in opening
            ):
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                continue
            kept.append(event)
        await original(self, kept)

    patched: Any = handle_events
    patched.opendepot_patched = True
    H2Protocol._handle_events = patched  # type: ignore[method-assign]


def hypercorn_config(config: Config) -> HypercornConfig:
    tolerate_late_request_data()
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
