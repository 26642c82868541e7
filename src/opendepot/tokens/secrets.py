"""Token secrets: 32 random bytes with a prefix naming the kind, stored only as a SHA-256 digest.

A fast hash is right here: the secrets carry 256 bits of entropy, so there is nothing to brute-force,
and lookups happen on every RPC."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from opendepot.auth import TokenKind

PREFIXES = {
    TokenKind.ORGANIZATION: "odo_",
    TokenKind.PROJECT: "odp_",
    TokenKind.BUILD: "odb_",
    TokenKind.PULL: "odr_",
    TokenKind.USER: "odu_",
}


def new_secret(kind: TokenKind) -> str:
    return PREFIXES[kind] + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def digests_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
