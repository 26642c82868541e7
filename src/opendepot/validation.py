"""Field checks shared by the domain services. Every failure names the field."""

from __future__ import annotations

from opendepot.errors import InvalidArgument

MAX_ID_LENGTH = 64


def require_id(field: str, value: str | None) -> str:
    """An identifier must be present and short; whether it exists is the caller's `not_found` to decide."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"is longer than {MAX_ID_LENGTH} characters")
    return value


def require_text(field: str, value: str | None, max_length: int) -> str:
    text = (value or "").strip()
    if not text:
        raise InvalidArgument(field, "is required and must not be blank")
    if len(text) > max_length:
        raise InvalidArgument(field, f"is longer than {max_length} characters")
    if any(ord(c) < 0x20 for c in text):
        raise InvalidArgument(field, "must not contain control characters")
    return text
