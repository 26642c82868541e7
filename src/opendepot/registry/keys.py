"""The key opendepot signs registry tokens with, and the certificate the registry trusts it by.

CNCF distribution finds the verifying key by the JWT's `kid`, which must be the libtrust key id of a public
key in its `rootcertbundle`: the SHA-256 of the key's DER SubjectPublicKeyInfo, first 240 bits, base32,
in groups of four joined by ':'. The key lives in the store (every node signs and checks the same tokens);
the registry process reads the certificate from `<data-dir>/registry/`."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from opendepot.pki.authority import cert_pem, certificate_builder, common_name, key_pem, write_if_changed
from opendepot.sealed.vault import Secret, Vault

ISSUER = "opendepot"
SERVICE = "opendepot-registry"
KEY_FILE = "token-key.pem"
CERT_FILE = "token-cert.pem"
SIGNER_LIFETIME = dt.timedelta(days=3650)
EVENTS_SECRET_FILE = "events-secret"  # noqa: S105 - a file name
SECRET_NAME = "registry-token-signer"  # noqa: S105 - a name


@dataclass(frozen=True, slots=True)
class Access:
    """One grant in a registry token: `repository:<name>:<actions>`."""

    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _new_signer() -> Secret:
    key = ec.generate_private_key(ec.SECP256R1())
    name = common_name("opendepot registry token signer")
    cert = certificate_builder(name, name, key, SIGNER_LIFETIME).sign(key, hashes.SHA256())
    return Secret(
        public={"cert": cert_pem(cert)},
        private={
            "key": key_pem(key),
            "events_secret": secrets.token_urlsafe(32),
            "http_secret": secrets.token_urlsafe(32),
        },
    )


def _legacy_files(directory: Path) -> Secret | None:
    """The files a single node made in its data dir before the store kept them: imported as they are, so
    tokens it signed keep verifying."""
    try:
        return Secret(
            public={"cert": (directory / CERT_FILE).read_text()},
            private={
                "key": (directory / KEY_FILE).read_text(),
                "events_secret": (directory / EVENTS_SECRET_FILE).read_text().strip(),
                "http_secret": secrets.token_urlsafe(32),
            },
        )
    except FileNotFoundError:
        return None


class TokenSigner:
    """Signs the JWTs the registry accepts (ES256, `kid` in libtrust form). The key, the notification secret
    and the registry's HTTP secret live in the store (`registry-token-signer`, sealed): every node's API
    signs tokens every node's registry accepts, and registries behind one address share upload state."""

    def __init__(self, vault: Vault, directory: Path) -> None:
        self.directory = directory
        secret = vault.get_or_create(SECRET_NAME, lambda: _legacy_files(directory) or _new_signer())
        key = serialization.load_pem_private_key(secret.private["key"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"the stored {SECRET_NAME} is not an EC key")
        self._key = key
        self.key_id = libtrust_key_id(key.public_key())
        self.events_secret = secret.private["events_secret"]
        self.http_secret = secret.private["http_secret"]
        self.cert_pem = secret.public["cert"]

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    def write_cert(self) -> None:
        """The certificate the registry process reads (`rootcertbundle`); the private files of a data dir
        from before the store kept them are removed once imported."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_if_changed(self.cert_path, self.cert_pem)
        for legacy in (KEY_FILE, EVENTS_SECRET_FILE):
            (self.directory / legacy).unlink(missing_ok=True)

    def sign(self, subject: str, access: Sequence[Access], lifetime: dt.timedelta) -> tuple[str, dt.datetime]:
        now = dt.datetime.now(dt.UTC)
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "iat": now,
            "nbf": now - dt.timedelta(seconds=30),
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            "access": [a.claim() for a in access],
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.key_id})
        return token, now
