"""A passive observer of the HTTP/2 traffic between a BuildKit client and buildkitd.

It learns each stream's :path from the client's HEADERS (HPACK-decoded, in order, so that the dynamic table
stays in step) and reads the gRPC messages on `/moby.buildkit.v1.Control/Status` response streams: every
vertex and log line BuildKit reports. It never changes a byte; other frames' payloads are skipped without
being copied. Any surprise turns the tap off for that connection and leaves the traffic alone."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable

import hpack

log = logging.getLogger("opendepot.gateway")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
STATUS_PATH = b"/moby.buildkit.v1.Control/Status"
# The most of one header block (HEADERS and its CONTINUATIONs) the tap holds: hpack refuses a decoded list
# over 64 KiB anyway, and a block never decodes smaller than it is. Without it a client sending CONTINUATION
# frames that never end the block made the tap hold all of them (buildkitd's gRPC server reads up to 16 MiB of
# headers before it closes the connection).
MAX_HEADER_BLOCK = 64 << 10


class HeaderBlockTooLarge(ValueError):
    pass


Frame = tuple[int, int, int, bytes]


class _Frames:
    """Splits one direction's bytes into frames, buffering only the payloads `wanted` asks for."""

    def __init__(
        self, preface: int, wanted: Callable[[int, int], bool], max_payload: int | None = None
    ) -> None:
        self._preface = preface
        self._wanted = wanted
        self._max_payload = max_payload
        self._header = bytearray()
        self._skip = 0
        self._collect = 0
        self._payload = bytearray()
        self._current = (0, 0, 0)

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        i, n = 0, len(data)
        while i < n:
            if self._preface:
                take = min(self._preface, n - i)
                i, self._preface = i + take, self._preface - take
            elif self._skip:
                take = min(self._skip, n - i)
                i, self._skip = i + take, self._skip - take
            elif self._collect:
                take = min(self._collect, n - i)
                self._payload += data[i : i + take]
                i, self._collect = i + take, self._collect - take
                if not self._collect:
                    frames.append((*self._current, bytes(self._payload)))
            else:
                if self._header or n - i < 9:  # a frame header split between reads
                    take = min(9 - len(self._header), n - i)
                    self._header += data[i : i + take]
                    i += take
                    if len(self._header) < 9:
                        continue
                    h: bytes | memoryview = bytes(self._header)
                    self._header = bytearray()
                else:  # the common case, read in place
                    h = data[i : i + 9]
                    i += 9
                length, kind, flags = int.from_bytes(h[0:3], "big"), h[3], h[4]
                stream = int.from_bytes(h[5:9], "big") & 0x7FFFFFFF
                if not self._wanted(kind, stream):
                    # Skipped without another turn of the loop when the payload is all here.
                    take = min(length, n - i)
                    i, self._skip = i + take, length - take
                elif length == 0:
                    frames.append((kind, flags, stream, b""))
                elif self._max_payload is not None and length > self._max_payload:
                    raise HeaderBlockTooLarge(f"a {length}-byte frame of kind {kind}")
                else:
                    self._current, self._collect, self._payload = (
                        (kind, flags, stream),
                        length,
                        bytearray(),
                    )
        return frames


def _unpad(flags: int, payload: bytes) -> bytes:
    if flags & PADDED:
        pad = payload[0]
        payload = payload[1 : len(payload) - pad]
    return payload


class StatusTap:
    def __init__(
        self, on_status: Callable[[bytes], None], on_status_end: Callable[[], None] = lambda: None
    ) -> None:
        self.on_status = on_status
        self.on_status_end = on_status_end
        self.enabled = True
        self._decoder = hpack.Decoder()
        self._status_streams: set[int] = set()
        self._block = bytearray()
        self._block_stream = 0
        self._grpc: dict[int, bytearray] = {}
        self._client = _Frames(
            len(PREFACE), lambda kind, _stream: kind in (HEADERS, CONTINUATION), MAX_HEADER_BLOCK
        )
        # DATA carries the status messages; HEADERS (trailers) may be what ends the stream.
        self._server = _Frames(
            0, lambda kind, stream: kind in (DATA, HEADERS) and stream in self._status_streams
        )

    def from_client(self, data: bytes | memoryview) -> None:
        if self.enabled:
            self._guard(self._client_frames, data)

    def from_server(self, data: bytes | memoryview) -> None:
        if self.enabled:
            self._guard(self._server_frames, data)

    def _guard(self, handler: Callable[[bytes | memoryview], None], data: bytes | memoryview) -> None:
        try:
            handler(data)
        except HeaderBlockTooLarge as e:
            self._off()
            log.warning(
                "status tap turned off for a connection: a header block over %d bytes (%s)",
                MAX_HEADER_BLOCK,
                str(e),  # not the exception: a kept record would keep its frames' buffers
            )
        except Exception:
            self._off()
            log.warning("status tap turned off for a connection after an unexpected frame", exc_info=True)

    def _off(self) -> None:
        """Off for good, holding nothing."""
        self.enabled = False
        self._block = bytearray()
        self._grpc.clear()
        self._client = self._server = _Frames(0, lambda _kind, _stream: False)

    def _client_frames(self, data: bytes | memoryview) -> None:
        for kind, flags, stream, payload in self._client.feed(data):
            if kind == HEADERS:
                fragment = _unpad(flags, payload)
                if flags & PRIORITY:
                    fragment = fragment[5:]
                self._block, self._block_stream = bytearray(fragment), stream
            else:
                self._block += payload
            if len(self._block) > MAX_HEADER_BLOCK:
                raise HeaderBlockTooLarge(f"{len(self._block)} bytes so far on stream {self._block_stream}")
            if flags & END_HEADERS:
                headers = self._decoder.decode(bytes(self._block), raw=True)
                if any(name == b":path" and value == STATUS_PATH for name, value in headers):
                    self._status_streams.add(self._block_stream)
                self._block = bytearray()

    def _server_frames(self, data: bytes | memoryview) -> None:
        for kind, flags, stream, payload in self._server.feed(data):
            if kind == HEADERS:
                if flags & END_STREAM:
                    self._status_ended(stream)
                continue
            buffer = self._grpc.setdefault(stream, bytearray())
            buffer += _unpad(flags, payload)
            while len(buffer) >= 5:
                length = int.from_bytes(buffer[1:5], "big")
                if len(buffer) < 5 + length:
                    break
                compressed, message = buffer[0], bytes(buffer[5 : 5 + length])
                del buffer[: 5 + length]
                self.on_status(gzip.decompress(message) if compressed else message)
            if flags & END_STREAM:
                self._status_ended(stream)

    def _status_ended(self, stream: int) -> None:
        """The solve is over: what it reported should be readable before the client finishes the build."""
        self._status_streams.discard(stream)
        self._grpc.pop(stream, None)
        self.on_status_end()
