from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from opendepot.errors import InvalidArgument
from opendepot.pagination import MAX_PAGE_SIZE, Cursor, decode_token, encode_token, next_token, page_request

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_token_round_trip() -> None:
    token = encode_token("projects", Cursor(AT, "abc0123456"))
    assert decode_token("projects", token) == Cursor(AT, "abc0123456")


@pytest.mark.parametrize(
    "token", ["garbage!", "e30", "W10", "x" * 600, encode_token("builds", Cursor(AT, "a"))]
)
def test_bad_tokens_name_the_field(token: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode_token("projects", token)
    assert err.value.field == "page_token"


def forged(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "payload",
    [
        {"l": "projects", "k": ["0001-01-01T00:00:00+23:59", "a"]},  # overflows when moved to UTC
        {"l": "projects", "k": ["9999-12-31T23:59:59-23:00", "a"]},
        {"l": "projects", "k": ["2026-01-01T00:00:00", "a\0b"]},  # PostgreSQL refuses NUL
        {"l": "projects", "k": ["2026-01-01T00:00:00", 5]},
        {"l": "projects", "k": ["2026-01-01T00:00:00", "x" * 100]},
    ],
)
def test_forged_tokens_are_invalid_argument(payload: object) -> None:
    with pytest.raises(InvalidArgument):
        decode_token("projects", forged(payload))


def test_page_sizes() -> None:
    assert page_request("p", None, None).size == 100
    assert page_request("p", 0, None).size == 100
    assert page_request("p", 5, None).size == 5
    assert page_request("p", 10**6, None).size == MAX_PAGE_SIZE
    assert page_request("p", None, None, default_size=50).size == 50
    with pytest.raises(InvalidArgument):
        page_request("p", -1, None)


def test_next_token_only_when_more_rows_came_back() -> None:
    rows = [Cursor(AT, str(i)) for i in range(3)]
    assert next_token("p", rows, 3) is None
    token = next_token("p", rows, 2)
    assert token is not None and decode_token("p", token) == rows[1]
