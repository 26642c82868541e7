"""Identifiers in Depot's shape: 10 characters from a lowercase alphabet without vowels or look-alikes."""

from __future__ import annotations

import secrets

ALPHABET = "0123456789bcdfghjklmnpqrstvwxz"
ID_LENGTH = 10


def new_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH))


def looks_like_id(value: str) -> bool:
    return len(value) == ID_LENGTH and all(c in ALPHABET for c in value)
