"""The guard expands gzip the way the codec would (every member), and the codec is only ever given what the
guard expanded and checked. A second gzip member used to pass the guard unseen: an empty first member, then
JSON nested 14,000 deep, segfaulted an API worker for an anonymous caller; a unary body lost its second
member without a word."""

from __future__ import annotations

import gzip
import json

import pytest

from opendepot.api.guard import Refused, StreamChecker, gunzip_bounded

DEEP = b"[" * 14000 + b"]" * 14000


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def test_every_member_is_expanded_and_counted() -> None:
    document = json.dumps({"projectId": "p" * 100}).encode()
    split = gzip.compress(document[:40]) + gzip.compress(document[40:])
    assert gunzip_bounded(split, 1024) == document
    assert gunzip_bounded(b"", 10) == b""
    with pytest.raises(Refused) as refused:
        gunzip_bounded(gzip.compress(b"") + gzip.compress(b"\0" * (1 << 20)), 16 * 1024)
    assert refused.value.code == "resource_exhausted"
    with pytest.raises(Refused) as refused:
        gunzip_bounded(gzip.compress(b"a") + b"junk", 1024)
    assert refused.value.code == "invalid_argument"
    with pytest.raises(Refused) as refused:
        gunzip_bounded(gzip.compress(b"a") + gzip.compress(b"bcd")[:-3], 1024)
    assert refused.value.code == "invalid_argument"


def test_a_nested_second_member_is_refused_in_a_stream() -> None:
    checker = StreamChecker(1 << 20, 1 << 22, json_depth=64, gzip=True)
    with pytest.raises(Refused) as refused:
        checker.feed(envelope(gzip.compress(b"") + gzip.compress(DEEP), flags=1))
    assert refused.value.code == "invalid_argument"
    assert "nested deeper" in refused.value.message


def test_compressed_messages_go_on_expanded_and_plain_ones_as_they_are() -> None:
    first, second = b'{"id":"' + b"a" * 5000 + b'"}', b'{"id":"b"}'
    stream = envelope(gzip.compress(first[:100]) + gzip.compress(first[100:]), flags=1) + envelope(second)
    checker = StreamChecker(1 << 20, 1 << 22, json_depth=64, gzip=True)
    # In small pieces, as the network may cut it: nothing of the compressed message goes on until it is whole.
    passed = [checker.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)]
    assert b"".join(passed) == envelope(first) + envelope(second)
    whole_at = len(envelope(gzip.compress(first[:100]) + gzip.compress(first[100:]), flags=1))
    assert b"".join(passed[: (whole_at - 1) // 7]) == b""
    # A binary (proto) stream is not held when plain: what comes goes on (its header once whole).
    binary = StreamChecker(1 << 20, 1 << 22, json_depth=None, gzip=True)
    plain = envelope(b"\x0a\x01x")
    assert binary.feed(plain[:7]) == plain[:7]
    assert binary.feed(plain[7:]) == plain[7:]
    compressed = envelope(gzip.compress(b"\x0a\x01y"), flags=1)
    assert binary.feed(compressed[:-1]) == b""
    assert binary.feed(compressed[-1:]) == envelope(b"\x0a\x01y")
