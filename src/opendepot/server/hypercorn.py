"""Hypercorn's settings for the API: long-lived streams, many requests per connection, h2 by ALPN on TLS."""

from __future__ import annotations

from typing import Any

import h2.events
import h11
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

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


# What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4): the depot CLI, on every RPC.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_prior_knowledge_at_once() -> None:
    """Hypercorn starts every cleartext connection as HTTP/1.1: the h2c client's preface is parsed by h11 as
    a request, which raises, and only then is the connection handed to HTTP/2 (~50 µs, on each of the
    CLI's RPCs: it opens a new connection for every one). A connection whose first bytes are the whole
    preface goes to HTTP/2 at once, as Hypercorn's own switch does; anything else (HTTP/1.1, an Upgrade, a
    preface split over reads, TLS) takes Hypercorn's path unchanged."""
    original = ProtocolWrapper.handle
    if getattr(original, "opendepot_patched", False):
        return

    async def handle(self: ProtocolWrapper, event: Event) -> None:
        fresh = (
            isinstance(self.protocol, H11Protocol)
            and self.protocol.connection.their_state is h11.IDLE
            and not self.protocol.connection.trailing_data[0]  # nothing half-read before these bytes
        )
        if fresh and isinstance(event, RawData) and event.data.startswith(H2_PREFACE) and not self.ssl:
            self.protocol = H2Protocol(
                self.app,
                self.config,
                self.context,
                self.task_group,
                self.state,
                self.ssl,
                self.client,
                self.server,
                self.send,
            )
            # As H2Protocol.initiate, but the server's SETTINGS wait for the first flush: they leave in one
            # write with the acknowledgement of the client's (one wake-up less on both sides).
            self.protocol.connection.initiate_connection()
            self.task_group.spawn(self.protocol.send_task)
            await self.protocol.handle(event)
            return
        await original(self, event)

    patched: Any = handle
    patched.opendepot_patched = True
    ProtocolWrapper.handle = patched  # type: ignore[method-assign]


async def _no_flush() -> None:
    pass


def one_write_per_send_step() -> None:
    """Hypercorn's HTTP/2 sender writes after each frame it makes: a unary answer's last DATA frame and the
    END_STREAM after it go out in two writes, so the client wakes twice for one answer. The frames one send
    step makes are written together at its end (nothing in a step waits: the bytes leave microseconds
    later, in one write)."""
    original = H2Protocol._send_data
    if getattr(original, "opendepot_patched", False):
        return

    async def send_data(self: H2Protocol, stream_id: int) -> None:
        self._flush = _no_flush  # type: ignore[method-assign]
        try:
            await original(self, stream_id)
        finally:
            del self._flush
        await self._flush()

    patched: Any = send_data
    patched.opendepot_patched = True
    H2Protocol._send_data = patched  # type: ignore[method-assign]


def hypercorn_config(config: Config) -> HypercornConfig:
    tolerate_late_request_data()
    h2_prior_knowledge_at_once()
    one_write_per_send_step()
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
    # No `server: hypercorn-h2` on every answer: one header less to encode per response, and nothing that
    # names the server's software to whoever asks.
    hc.include_server_header = False
    if config.api.tls_cert and config.api.tls_key:
        hc.certfile = str(config.api.tls_cert)
        hc.keyfile = str(config.api.tls_key)
        hc.alpn_protocols = ["h2", "http/1.1"]
    return hc
