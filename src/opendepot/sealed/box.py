"""The operator's secret key and what it seals: AES-256-GCM with a fresh 96-bit nonce per seal."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_KEY_CHARS = 32
NONCE_BYTES = 12


class WrongSecretKey(Exception):
    """The store's secrets were sealed with another key than this node's."""


class SecretKey:
    """Made from the operator's text (at least 32 characters of randomness, e.g. `openssl rand -base64 32`):
    HKDF-SHA256 turns it into the AES key, so any printable form of random bytes works."""

    def __init__(self, text: str) -> None:
        text = text.strip()
        if len(text) < MIN_KEY_CHARS:
            raise ValueError(f"the secret key must be at least {MIN_KEY_CHARS} characters long")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"opendepot sealed secrets v1")
        self._aead = AESGCM(derived.derive(text.encode()))

    def seal(self, plaintext: bytes, name: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, name.encode())

    def open(self, sealed: bytes, name: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
        except InvalidTag:
            raise WrongSecretKey(
                f"the secret {name!r} in the store was sealed with another secret key: give every node the "
                "same --secret-key (or --secret-key-file)"
            ) from None


def new_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def load_key(text: str, path: Path, create: bool) -> SecretKey:
    """`text` when given; else the file, made first when `create` (a single node: the data dir default)."""
    if text:
        return SecretKey(text)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no secret key file {path}")
        # Written aside, then linked into place: a process of this node that loses the race reads the
        # winner's whole key, never a file still being written.
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key_text() + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process of this node made it first
        finally:
            draft.unlink()
    return SecretKey(path.read_text())
