"""Keyset pagination with opaque page tokens.

A token is base64url(JSON {"l": list name, "k": [created_at ISO, id]}). It names the list it came from, so a
token from one list is refused by another; anything that does not decode is `invalid_argument`."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from opendepot.clock import as_utc
from opendepot.errors import InvalidArgument
from opendepot.validation import MAX_ID_LENGTH

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_TOKEN_LENGTH = 512
NOT_ISSUED = "is not a page token this list issued"


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at: datetime
    id: str

    def numeric_id(self) -> int:
        """The id, in a list whose ids are row numbers: anything but a number that fits a 64-bit column
        was not issued here (int() of it raised, or the database refused it: a 500)."""
        if not (self.id.isascii() and self.id.isdigit() and len(self.id) <= 18):
            raise InvalidArgument("page_token", NOT_ISSUED)
        return int(self.id)


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int
    after: Cursor | None


def page_request(
    list_name: str,
    page_size: int | None,
    page_token: str | None,
    *,
    default_size: int = DEFAULT_PAGE_SIZE,
) -> PageRequest:
    if page_size is None or page_size == 0:
        size = default_size
    elif page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    else:
        size = min(page_size, MAX_PAGE_SIZE)
    after = decode_token(list_name, page_token) if page_token else None
    return PageRequest(size=size, after=after)


def encode_token(list_name: str, cursor: Cursor) -> str:
    payload = {"l": list_name, "k": [cursor.created_at.isoformat(), cursor.id]}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_token(list_name: str, token: str) -> Cursor:
    problem = NOT_ISSUED
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument("page_token", problem)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        if payload["l"] != list_name:
            raise InvalidArgument("page_token", problem)
        created_at, item_id = payload["k"]
        # Ids are short printable strings; anything else was not issued here (and a NUL breaks PostgreSQL).
        if not isinstance(item_id, str) or not item_id.isprintable() or len(item_id) > MAX_ID_LENGTH:
            raise InvalidArgument("page_token", problem)
        return Cursor(created_at=as_utc(datetime.fromisoformat(created_at)), id=item_id)
    except InvalidArgument:
        raise
    # OverflowError: a timestamp at the edge of the calendar whose offset moves it past the edge.
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidArgument("page_token", problem) from exc


def next_token(list_name: str, items: list[Cursor], size: int) -> str | None:
    """The caller fetched size + 1 rows: a next page exists only if the extra row came back."""
    if len(items) <= size:
        return None
    return encode_token(list_name, items[size - 1])
