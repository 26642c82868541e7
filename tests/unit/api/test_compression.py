"""Responses under SMALL_MESSAGE go out as stored gzip members: valid gzip, built without deflating."""

from __future__ import annotations

import gzip
import os
import zlib

from opendepot.api.compression import SMALL_MESSAGE, QuickGzip, stored_gzip


def test_stored_members_decode_as_gzip() -> None:
    for size in (0, 1, 300, SMALL_MESSAGE - 1, 65535):
        data = os.urandom(size)
        member = stored_gzip(data)
        assert gzip.decompress(member) == data
        assert zlib.decompress(member, wbits=31) == data
        assert len(member) == len(data) + 23  # header 10, block header 5, CRC and size 8


def test_small_messages_are_stored_and_large_ones_compressed() -> None:
    codec = QuickGzip()
    small, large = b"a" * (SMALL_MESSAGE - 1), b"a" * SMALL_MESSAGE
    assert codec.compress(small) == stored_gzip(small)
    compressed = codec.compress(large)
    assert len(compressed) < len(large) // 10 and gzip.decompress(compressed) == large
    assert codec.decompress(codec.compress(memoryview(small))) == small
    assert codec.name() == "gzip"
