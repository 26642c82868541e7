"""The key opendepot signs registry tokens with, and the certificate the registry trusts it by.

CNCF distribution finds the verifying key by the JWT's `kid`, which must be the libtrust key id of a public
key in its `rootcertbundle`: the SHA-256 of the key's DER SubjectPublicKeyInfo, first 240 bits, base32,
in groups of four joined by ':'. Files live in `<data-dir>/registry/`, made once by the supervisor."""

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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opendepot.files import write_private
from opendepot.pki.authority import certificate_builder

ISSUER = "opendepot"
SERVICE = "opendepot-registry"
KEY_FILE = "token-key.pem"
CERT_FILE = "token-cert.pem"
SIGNER_LIFETIME = dt.timedelta(days=3650)
EVENTS_SECRET_FILE = "events-secret"  # noqa: S105 - a file name


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


def ensure_keys(directory: Path) -> None:
    """Creates the signing key, its certificate and the notification secret if they are missing."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    if not (key_path.exists() and cert_path.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opendepot registry token signer")])
        cert = certificate_builder(name, name, key, SIGNER_LIFETIME).sign(key, hashes.SHA256())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(key_path, pem)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    secret_path = directory / EVENTS_SECRET_FILE
    if not secret_path.exists():
        write_private(secret_path, secrets.token_urlsafe(32).encode())


class TokenSigner:
    """Signs the JWTs the registry accepts (ES256, `kid` in libtrust form)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / KEY_FILE} is not an EC key")
        self._key = key
        self.key_id = libtrust_key_id(key.public_key())
        self.events_secret = (directory / EVENTS_SECRET_FILE).read_text().strip()

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

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
