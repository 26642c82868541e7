"""What server/hypercorn.py changes around Hypercorn: a connection whose first read is the whole h2c preface
goes to HTTP/2 without h11 parsing it (any other first read still goes through h11); a send step of the
HTTP/2 sender writes its frames at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import pytest
from hypercorn.asyncio.worker_context import EventWrapper, WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.protocol.h11 import H11Protocol

from opendepot.server.hypercorn import H2_PREFACE, h2_prior_knowledge_at_once, one_write_per_send_step


class NoTasks:
    def spawn(self, *_args: Any) -> None:
        pass


def collector(sent: list[Event]) -> Callable[[Event], Awaitable[None]]:
    async def send(event: Event) -> None:
        sent.append(event)

    return send


def protocol_args(send: Callable[[Event], Awaitable[None]]) -> tuple[Any, ...]:
    """What Hypercorn hands a connection's protocol: no app (no request reaches one here), loopback ends."""
    return (
        None,
        HypercornConfig(),
        WorkerContext(None),
        NoTasks(),
        {},
        False,
        ("127.0.0.1", 1),
        ("127.0.0.1", 2),
        send,
    )


def wrapper(sent: list[Event]) -> ProtocolWrapper:
    return ProtocolWrapper(*protocol_args(collector(sent)))


def client_preface() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    data = client.data_to_send()
    assert data.startswith(H2_PREFACE)
    return data


def test_a_whole_preface_goes_to_http2_without_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    h2_prior_knowledge_at_once()

    async def h11_must_not_parse(_self: H11Protocol, _event: Event) -> None:
        raise AssertionError("h11 parsed an HTTP/2 preface")

    monkeypatch.setattr(H11Protocol, "handle", h11_must_not_parse)
    sent: list[Event] = []
    connection = wrapper(sent)
    asyncio.run(connection.handle(RawData(client_preface())))
    assert isinstance(connection.protocol, H2Protocol)
    # One write: the server's SETTINGS first, then its acknowledgement of the client's.
    writes = [e.data for e in sent if isinstance(e, RawData)]
    assert len(writes) == 1
    first_length = int.from_bytes(writes[0][:3], "big")
    ack = writes[0][9 + first_length :]
    assert writes[0][3] == 0x04 and writes[0][4] == 0  # SETTINGS
    assert ack[3] == 0x04 and ack[4] == 0x01  # SETTINGS with ACK


def test_a_split_preface_and_http1_still_go_through_h11() -> None:
    h2_prior_knowledge_at_once()
    sent: list[Event] = []
    split = wrapper(sent)
    asyncio.run(split.handle(RawData(H2_PREFACE[:10])))
    assert isinstance(split.protocol, H11Protocol)
    asyncio.run(split.handle(RawData(client_preface()[10:])))
    assert isinstance(split.protocol, H2Protocol)  # Hypercorn's own switch

    plain = wrapper([])
    asyncio.run(plain.handle(RawData(b"GET /healthz HTTP/1.1\r\n")))
    assert isinstance(plain.protocol, H11Protocol)


def test_a_send_step_writes_its_frames_at_once() -> None:
    """The last DATA of an answer and its END_STREAM leave in one write (one wake-up of the client)."""
    one_write_per_send_step()
    sent: list[Event] = []

    async def answer() -> None:
        protocol = H2Protocol(*protocol_args(collector(sent)))
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(
            1, [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/")]
        )
        protocol.connection.initiate_connection()
        protocol.connection.receive_data(client.data_to_send())
        protocol.connection.send_headers(1, [(b":status", b"200")])
        buffer = StreamBuffer(EventWrapper)
        protocol.stream_buffers[1] = buffer
        protocol.priority.insert_stream(1)
        await buffer.push(b"x" * 100)
        buffer.set_complete()
        await protocol._flush()
        sent.clear()
        await protocol._send_data(1)

    asyncio.run(answer())
    assert len(sent) == 1
    frames = sent[0].data  # type: ignore[attr-defined]
    types_and_flags = []
    while frames:
        length = int.from_bytes(frames[:3], "big")
        types_and_flags.append((frames[3], frames[4] & 0x01))
        frames = frames[9 + length :]
    assert types_and_flags[0][0] == 0x00  # DATA
    assert types_and_flags[-1] == (0x00, 0x01)  # DATA with END_STREAM
