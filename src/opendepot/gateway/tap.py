"""A passive observer of the HTTP/2 traffic between a BuildKit client and buildkitd.

It learns each stream's :path from the client's HEADERS (HPACK-decoded, in order, so that the dynamic table
stays in step) and reads the gRPC messages on `/moby.buildkit.v1.Control/Status` response streams: every
vertex and log line BuildKit reports. It never changes a byte; other frames' payloads are skipped without
being copied. Any surprise turns the tap off for that connection and leaves the traffic alone."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable

import hpack

log = logging.getLogger("opendepot.gateway")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, CONTINUATION = 0x0, 0x1, 0x3, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
STATUS_PATH = b"/moby.buildkit.v1.Control/Status"
# What the tap spends on one connection, whose client is a tenant's: past any of these it turns off for that
# connection (the traffic goes on, its statuses are not recorded). A BuildKit client's requests decode to a
# few KiB of headers each (a session's list of methods is the largest) and it opens a Status stream per
# solve. Without them, one tenant's header blocks of 1,000 one-byte HPACK references held the relay thread
# of every tenant for 0.5 s a pass, and 800 Status streams each held just short of a 1 MiB message: 900 MiB.
# The most of one header block (HEADERS and its CONTINUATIONs) the tap holds, and the most it decodes to.
MAX_HEADER_BLOCK = 16 << 10
# Decoded header lists of one connection in all.
MAX_HEADERS_DECODED = 1 << 20
MAX_STATUS_STREAMS = 16
# Partial status messages one connection's tap holds, and all taps of this process together.
MAX_HELD = 16 << 20
MAX_HELD_ALL = 256 << 20
# One status message, decompressed (the API's own bound on a status message).
MAX_STATUS_MESSAGE = 16 << 20


class _Held:
    """Bytes held by every tap of this process (they run on the one relay thread)."""

    total = 0


class HeaderBlockTooLarge(ValueError):
    pass


class OverBudget(ValueError):
    pass


Frame = tuple[int, int, int, bytes]
# An HTTP/2 frame header: a 24-bit length and the 8-bit kind (read as one word), the flags, the stream id.
_FRAME_HEADER = struct.Struct(">IBI")


class _Frames:
    """Splits one direction's bytes into frames, buffering only the payloads of the frames it is told to keep:
    those whose kind is in `kinds` and, if `streams` is given, whose stream is in that (live) set.

    It runs over every byte a build sends (a 200 MB context is ~29,000 frames), so a frame that is not kept
    costs one header unpack and a comparison, and its payload is skipped without being looked at."""

    def __init__(
        self,
        preface: int,
        kinds: frozenset[int],
        streams: set[int] | None = None,
        max_payload: int | None = None,
    ) -> None:
        self._preface = preface
        self._kinds = kinds
        self._streams = streams
        self._max_payload = max_payload
        self._header = bytearray()
        self._skip = 0
        self._collect = 0
        self._payload = bytearray()
        self._current = (0, 0, 0)

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        frames: list[Frame] = []
        i, n = 0, len(data)
        kinds, streams, unpack = self._kinds, self._streams, _FRAME_HEADER.unpack_from
        while i < n:
            if self._preface:
                take = min(self._preface, n - i)
                i, self._preface = i + take, self._preface - take
                continue
            if self._skip:
                take = min(self._skip, n - i)
                i, self._skip = i + take, self._skip - take
                continue
            if self._collect:
                take = min(self._collect, n - i)
                self._payload += data[i : i + take]
                i, self._collect = i + take, self._collect - take
                if not self._collect:
                    frames.append((*self._current, bytes(self._payload)))
                continue
            if self._header or n - i < 9:  # a frame header split between reads
                take = min(9 - len(self._header), n - i)
                self._header += data[i : i + take]
                i += take
                if len(self._header) < 9:
                    continue
                word, flags, stream = unpack(self._header)
                self._header = bytearray()
            else:  # the common case, read in place
                word, flags, stream = unpack(data, i)
                i += 9
            length, kind = word >> 8, word & 0xFF
            stream &= 0x7FFFFFFF
            if kind not in kinds or (streams is not None and stream not in streams):
                # Skipped without another turn of the loop when the payload is all here.
                end = i + length
                if end <= n:
                    i = end
                else:
                    i, self._skip = n, end - n
            elif length == 0:
                frames.append((kind, flags, stream, b""))
            elif self._max_payload is not None and length > self._max_payload:
                raise HeaderBlockTooLarge(f"a {length}-byte frame of kind {kind}")
            else:
                self._current, self._collect, self._payload = (kind, flags, stream), length, bytearray()
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
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self._decoded = 0
        self._status_streams: set[int] = set()
        self._block = bytearray()
        self._block_stream = 0
        self._grpc: dict[int, bytearray] = {}
        self._held = 0
        self._client = _Frames(
            len(PREFACE), frozenset((HEADERS, CONTINUATION, RST_STREAM)), max_payload=MAX_HEADER_BLOCK
        )
        # DATA carries the status messages; HEADERS (trailers) or a reset may be what ends the stream.
        self._server = _Frames(0, frozenset((DATA, HEADERS, RST_STREAM)), self._status_streams)

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
        except OverBudget as e:
            self._off()
            log.warning("status tap turned off for a connection: %s", str(e))
        except Exception:
            self._off()
            log.warning("status tap turned off for a connection after an unexpected frame", exc_info=True)

    def _off(self) -> None:
        """Off for good, holding nothing."""
        self.enabled = False
        self._block = bytearray()
        self._grpc.clear()
        self._hold(0)
        self._status_streams.clear()
        self._client = self._server = _Frames(0, frozenset())

    def close(self) -> None:
        """The connection is over: what it held is given back to the process's budget."""
        self._off()

    def _hold(self, held: int) -> None:
        _Held.total += held - self._held
        self._held = held

    def _client_frames(self, data: bytes | memoryview) -> None:
        for kind, flags, stream, payload in self._client.feed(data):
            if kind == RST_STREAM:
                if stream in self._status_streams:
                    self._status_ended(stream)
                continue
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
                self._decoded += sum(len(name) + len(value) + 32 for name, value in headers)  # RFC 7541 4.1
                if self._decoded > MAX_HEADERS_DECODED:
                    raise OverBudget(f"its requests' headers passed {MAX_HEADERS_DECODED} bytes")
                if any(name == b":path" and value == STATUS_PATH for name, value in headers):
                    if len(self._status_streams) >= MAX_STATUS_STREAMS:
                        raise OverBudget(f"over {MAX_STATUS_STREAMS} Status streams at once")
                    self._status_streams.add(self._block_stream)
                self._block = bytearray()

    def _server_frames(self, data: bytes | memoryview) -> None:
        for kind, flags, stream, payload in self._server.feed(data):
            if kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM):
                self._status_ended(stream)
                continue
            if kind == HEADERS:
                continue
            buffer = self._grpc.setdefault(stream, bytearray())
            buffer += _unpad(flags, payload)
            while len(buffer) >= 5:
                length = int.from_bytes(buffer[1:5], "big")
                if length > MAX_STATUS_MESSAGE:
                    raise OverBudget(f"a {length}-byte status message")
                if len(buffer) < 5 + length:
                    break
                compressed, message = buffer[0], bytes(buffer[5 : 5 + length])
                del buffer[: 5 + length]
                self.on_status(_gunzip(message) if compressed else message)
            if flags & END_STREAM:
                self._status_ended(stream)
            else:
                self._account()

    def _account(self) -> None:
        held = sum(len(buffer) for buffer in self._grpc.values())
        if held > MAX_HELD:
            raise OverBudget(f"{held} bytes of partial status messages")
        if _Held.total + held - self._held > MAX_HELD_ALL:
            raise OverBudget(f"the gateway's taps hold {MAX_HELD_ALL} bytes of partial status messages")
        self._hold(held)

    def _status_ended(self, stream: int) -> None:
        """The solve is over: what it reported should be readable before the client finishes the build."""
        self._status_streams.discard(stream)
        self._grpc.pop(stream, None)
        self._hold(sum(len(buffer) for buffer in self._grpc.values()))
        self.on_status_end()


def _gunzip(message: bytes) -> bytes:
    expander = zlib.decompressobj(wbits=31)
    out = expander.decompress(message, MAX_STATUS_MESSAGE + 1)
    if len(out) > MAX_STATUS_MESSAGE or not expander.eof:
        raise OverBudget(f"a status message over {MAX_STATUS_MESSAGE} bytes once decompressed, or cut")
    return out
