"""The status tap on a recorded conversation: HTTP/2 frames as a BuildKit client and buildkitd exchange
them (HPACK headers, CONTINUATION, padding, gRPC messages split across frames and reads, gzip), fed in
chunks of every size."""

from __future__ import annotations

import gzip
import tracemalloc
from datetime import UTC, datetime

import hpack
import pytest
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.buildkit.status import decode
from opendepot.gateway import tap as tap_module
from opendepot.gateway.tap import MAX_HEADER_BLOCK, PREFACE, StatusTap
from opendepot.gen.moby.buildkit.v1 import control_pb

DATA, HEADERS, SETTINGS, CONTINUATION = 0x0, 0x1, 0x4, 0x9
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
STATUS, SOLVE = 1, 3


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def grpc(message: bytes, *, compressed: bool = False) -> bytes:
    body = gzip.compress(message) if compressed else message
    return bytes([1 if compressed else 0]) + len(body).to_bytes(4, "big") + body


def status_message(name: str, log: bytes) -> bytes:
    at = Timestamp.from_datetime(datetime(2026, 1, 1, tzinfo=UTC))
    message = control_pb.StatusResponse(
        vertexes=[control_pb.Vertex(digest=f"sha256:{name}", name=name, started=at, cached=False)],
        logs=[control_pb.VertexLog(vertex=f"sha256:{name}", timestamp=at, stream=1, msg=log)],
    )
    return message.to_binary()


FIRST, SECOND, THIRD = (
    status_message("a", b"one\n"),
    status_message("b", b"two\n"),
    status_message("c", b"3\n"),
)


def recorded() -> tuple[bytes, bytes]:
    """(client → buildkitd bytes, buildkitd → client bytes)."""
    encoder = hpack.Encoder()
    status_block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/moby.buildkit.v1.Control/Status"),
            ("te", "trailers"),
        ]
    )
    solve_block = encoder.encode([(":method", "POST"), (":path", "/moby.buildkit.v1.Control/Solve")])
    half = len(status_block) // 2
    client = b"".join(
        [
            PREFACE,
            frame(SETTINGS, 0, 0, b""),
            # The Status request's header block split over HEADERS + CONTINUATION.
            frame(HEADERS, 0, STATUS, status_block[:half]),
            frame(CONTINUATION, END_HEADERS, STATUS, status_block[half:]),
            frame(HEADERS, END_HEADERS | PADDED, SOLVE, bytes([3]) + solve_block + b"\0\0\0"),
            frame(DATA, END_STREAM, STATUS, grpc(b"request body the tap ignores")),
        ]
    )
    first, second = grpc(FIRST), grpc(SECOND, compressed=True)
    server = b"".join(
        [
            frame(SETTINGS, 0, 0, b""),
            frame(HEADERS, END_HEADERS, STATUS, hpack.Encoder().encode([(":status", "200")])),
            # One gRPC message split across two DATA frames, the second frame also starting the next one.
            frame(DATA, 0, STATUS, first[:7]),
            frame(DATA, PADDED, STATUS, bytes([2]) + first[7:] + second[:3] + b"\0\0"),
            frame(DATA, 0, STATUS, second[3:]),
            # The Solve stream's data is none of the tap's business.
            frame(DATA, 0, SOLVE, grpc(THIRD)),
            frame(DATA, 0, STATUS, grpc(THIRD)),
            # Trailers end the Status stream.
            frame(HEADERS, END_HEADERS | END_STREAM, STATUS, hpack.Encoder().encode([("grpc-status", "0")])),
        ]
    )
    return client, server


def feed(data: bytes, sink: object, size: int) -> None:
    for i in range(0, len(data), size):
        sink(data[i : i + size])  # type: ignore[operator]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_the_tap_reads_every_status_message_and_nothing_else(chunk: int) -> None:
    seen: list[bytes] = []
    ended: list[bool] = []
    tap = StatusTap(seen.append, lambda: ended.append(True))
    client, server = recorded()
    feed(client, tap.from_client, chunk)
    feed(server, tap.from_server, chunk)
    assert seen == [FIRST, SECOND, THIRD]
    assert ended == [True]
    assert tap.enabled


def test_what_the_tap_reads_becomes_steps_and_logs() -> None:
    vertices, logs = decode(FIRST)
    assert [(v.digest, v.name, v.started) for v in vertices] == [
        ("sha256:a", "a", datetime(2026, 1, 1, tzinfo=UTC))
    ]
    assert [(chunk.digest, chunk.stream, chunk.data) for chunk in logs] == [("sha256:a", 1, b"one\n")]


def test_a_surprise_turns_the_tap_off_without_raising() -> None:
    seen: list[bytes] = []
    tap = StatusTap(seen.append)
    client, server = recorded()
    tap.from_client(client)
    # A compressed flag on a body that is not gzip: decoding fails inside the tap.
    tap.from_server(frame(DATA, 0, STATUS, bytes([1]) + (4).to_bytes(4, "big") + b"nope"))
    assert not tap.enabled
    tap.from_server(server)
    assert seen == []


def test_the_tap_keeps_nothing_of_the_relays_reused_buffer() -> None:
    """The gateway shows the tap views of a read buffer it fills again right after: what the tap keeps
    across calls must be its own copy."""
    seen: list[bytes] = []
    tap = StatusTap(seen.append)
    client, server = recorded()
    buffer = bytearray(5)
    for data, sink in ((client, tap.from_client), (server, tap.from_server)):
        for i in range(0, len(data), len(buffer)):
            piece = data[i : i + len(buffer)]
            buffer[: len(piece)] = piece
            sink(memoryview(buffer)[: len(piece)])
            buffer[:] = b"\xff" * len(buffer)  # the next read overwrites it
    assert seen == [FIRST, SECOND, THIRD]
    assert tap.enabled


def test_a_header_block_that_never_ends_turns_the_tap_off_holding_nothing() -> None:
    """CONTINUATION frames without END_HEADERS: the tap held every one of them until buildkitd closed the
    connection (its gRPC server reads up to 16 MiB of headers first). Past MAX_HEADER_BLOCK it lets go."""
    seen: list[bytes] = []
    tap = StatusTap(seen.append)
    piece = bytes(16 << 10)
    flood = b"".join(
        [
            PREFACE,
            frame(HEADERS, 0, STATUS, piece),
            *(frame(CONTINUATION, 0, STATUS, piece) for _ in range(255)),
        ]
    )
    tracemalloc.start()
    try:
        feed(flood, tap.from_client, 256 << 10)
        # What is still allocated by the tap's own code, once 4 MiB went through it.
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, tap_module.__file__)])
    finally:
        tracemalloc.stop()
    held = sum(stat.size for stat in snapshot.statistics("filename"))
    assert not tap.enabled
    assert held < 16 << 10, held
    _client, server = recorded()
    tap.from_server(server)
    assert seen == []


def test_one_frame_longer_than_a_header_block_turns_the_tap_off() -> None:
    tap = StatusTap(lambda _raw: None)
    tap.from_client(
        PREFACE + (MAX_HEADER_BLOCK + 1).to_bytes(3, "big") + bytes([HEADERS, 0]) + (1).to_bytes(4, "big")
    )
    assert not tap.enabled


def test_a_large_but_bounded_header_block_is_still_read() -> None:
    """A 12 KiB header (HPACK literal) over HEADERS + CONTINUATIONs: under the bound, the stream is found."""
    seen: list[bytes] = []
    tap = StatusTap(seen.append)
    block = hpack.Encoder().encode(
        [(":method", "POST"), (":path", "/moby.buildkit.v1.Control/Status"), ("x-big", "v" * (12 << 10))],
        huffman=False,
    )
    pieces = [block[i : i + (4 << 10)] for i in range(0, len(block), 4 << 10)]
    frames = [frame(HEADERS, 0, STATUS, pieces[0])]
    frames += [frame(CONTINUATION, 0, STATUS, p) for p in pieces[1:-1]]
    frames.append(frame(CONTINUATION, END_HEADERS, STATUS, pieces[-1]))
    tap.from_client(PREFACE + b"".join(frames))
    tap.from_server(frame(DATA, 0, STATUS, grpc(FIRST)))
    assert tap.enabled and seen == [FIRST]


def status_request(encoder: hpack.Encoder, stream: int) -> bytes:
    block = encoder.encode([(":method", "POST"), (":path", "/moby.buildkit.v1.Control/Status")])
    return frame(HEADERS, END_HEADERS, stream, block)


def test_cheap_hpack_references_cost_a_connection_its_tap_not_the_relay() -> None:
    """Header blocks of one-byte references to one indexed entry: each byte decodes to a whole header (about
    1.5 us of the relay thread, which every tenant's connections share). Past its budget of decoded headers
    the connection's tap turns off; a block decoding past MAX_HEADER_BLOCK does at once."""
    encoder = hpack.Encoder()
    first = encoder.encode([("accept-encoding", "gzip, deflate")])  # into the dynamic table: index 62
    cheap = bytes([0x80 | 62]) * 200  # 200 bytes, 200 headers of 47 decoded bytes each
    tap = StatusTap(lambda _raw: None)
    tap.from_client(PREFACE + frame(HEADERS, END_HEADERS, 1, first))
    stream = 3
    while tap.enabled and stream < 2 * tap_module.MAX_HEADERS_DECODED // len(cheap):
        tap.from_client(frame(HEADERS, END_HEADERS, stream, cheap))
        stream += 2
    assert not tap.enabled
    decoded_per_block = 200 * (len("accept-encoding") + len("gzip, deflate") + 32)
    assert stream // 2 <= tap_module.MAX_HEADERS_DECODED // decoded_per_block + 2
    one_big = StatusTap(lambda _raw: None)
    one_big.from_client(PREFACE + frame(HEADERS, END_HEADERS, 1, first))
    one_big.from_client(frame(HEADERS, END_HEADERS, 3, bytes([0x80 | 62]) * 1000))  # 60 KiB decoded
    assert not one_big.enabled


def test_status_streams_and_what_they_hold_are_bounded() -> None:
    """Status streams each stopped just short of a message's end held it: 800 of them, 900 MiB in the
    gateway process that relays every tenant. A connection may have MAX_STATUS_STREAMS of them and hold
    MAX_HELD bytes of partial messages; past either its tap turns off and gives back what it held."""
    encoder = hpack.Encoder()
    many = StatusTap(lambda _raw: None)
    many.from_client(PREFACE)
    for n in range(tap_module.MAX_STATUS_STREAMS):
        many.from_client(status_request(encoder, 1 + 2 * n))
    assert many.enabled
    many.from_client(status_request(encoder, 999))
    assert not many.enabled

    before = tap_module._Held.total
    holding = StatusTap(lambda _raw: None)
    encoder = hpack.Encoder()
    holding.from_client(PREFACE + status_request(encoder, 1) + status_request(encoder, 3))
    almost = (1 << 20).to_bytes(4, "big")  # a 1 MiB message, never finished
    holding.from_server(frame(DATA, 0, 1, bytes([0]) + almost + bytes(16000)))
    assert holding.enabled and tap_module._Held.total == before + 16005
    # The client resets the stream: what it held goes.
    holding.from_client(frame(0x3, 0, 1, (8).to_bytes(4, "big")))
    assert holding.enabled and tap_module._Held.total == before
    # Two streams each holding most of an allowed 16 MiB message, never finished.
    holding.from_client(status_request(encoder, 5))
    longest = tap_module.MAX_STATUS_MESSAGE.to_bytes(4, "big")
    for stream in (3, 5):
        holding.from_server(frame(DATA, 0, stream, bytes([0]) + longest))
        for _ in range(tap_module.MAX_HELD // 2 // 16000 + 1):
            holding.from_server(frame(DATA, 0, stream, bytes(16000)))
    assert not holding.enabled and tap_module._Held.total == before
    closed = StatusTap(lambda _raw: None)
    closed.from_client(PREFACE + status_request(hpack.Encoder(), 1))
    closed.from_server(frame(DATA, 0, 1, bytes([0]) + almost + bytes(100)))
    assert tap_module._Held.total == before + 105
    closed.close()  # the relay ended
    assert tap_module._Held.total == before


def test_a_status_message_past_the_bound_turns_the_tap_off() -> None:
    for body in (
        bytes([0]) + (tap_module.MAX_STATUS_MESSAGE + 1).to_bytes(4, "big"),  # declared too long
        grpc(bytes(tap_module.MAX_STATUS_MESSAGE + 1), compressed=True),  # a gzip bomb (16 KiB on the wire)
    ):
        seen: list[bytes] = []
        tap = StatusTap(seen.append)
        tap.from_client(PREFACE + status_request(hpack.Encoder(), 1))
        tap.from_server(frame(DATA, 0, 1, body))
        assert not tap.enabled and seen == []
