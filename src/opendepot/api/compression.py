"""Response compression as the Connect codec negotiates it (gzip, when the caller accepts it).

Every depot CLI call says `Accept-Encoding: gzip`, and connectrpc then gzips every response, however small:
for the few hundred bytes of CreateBuild or the 2 KiB of GetBuildKitConnection that saves a few hundred
bytes and costs ~50 µs of CPU on the worker's loop (setting up zlib's deflate state dominates, whatever the
level). A message below SMALL_MESSAGE is therefore sent as a gzip member holding one stored (uncompressed)
DEFLATE block: still the gzip the caller accepted (RFC 1952/1951), built in a few µs. Larger messages (list
pages, streamed logs) are compressed as before."""

from __future__ import annotations

import struct
import zlib

from connectrpc.compression.gzip import GzipCompression

# Below this a response is stored, not compressed. A stored DEFLATE block holds at most 65535 bytes.
SMALL_MESSAGE = 8 * 1024
# ID1 ID2, CM=8 (deflate), no flags, no mtime, no extra flags, OS unknown (255).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def stored_gzip(data: bytes) -> bytes:
    """One gzip member with data in a single final stored block (len(data) <= 65535)."""
    length = len(data)
    block = struct.pack("<BHH", 0x01, length, length ^ 0xFFFF)  # BFINAL=1, BTYPE=00
    trailer = struct.pack("<II", zlib.crc32(data), length)
    return b"".join((_GZIP_HEADER, block, data, trailer))


class QuickGzip(GzipCompression):
    """gzip that does not deflate small messages (see the module's docstring)."""

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        if len(data) < SMALL_MESSAGE:
            return stored_gzip(bytes(data))
        return super().compress(data)
