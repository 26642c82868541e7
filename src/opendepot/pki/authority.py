"""Per-project certificate authorities for the BuildKit gateway.

Each project has its own CA. The gateway presents, for the TLS server name `<project>.<suffix>`, a server
certificate signed by that CA, and accepts only client certificates signed by it. Each (build, platform)
gets a short-lived client certificate whose URI SAN names it:
`spiffe://opendepot/project/<project>/build/<build>/platform/<platform>`.

The CA lives in the store (every node issues and checks the same certificates); each node keeps under
`<data-dir>/pki/<project>/` only the files TLS needs, keys mode 0600."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opendepot.ids import looks_like_id
from opendepot.sealed.vault import Secret, Vault

SERVER_NAME_SUFFIX = "buildkit.opendepot.internal"
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=825)
LEGACY_CA_KEY = "ca-key.pem"
# How long a project no node made a CA for is remembered as such (a CA made meanwhile is seen after it).
ABSENT_SECONDS = 2.0
MAX_ABSENT = 10_000
_IDENTITY = re.compile(r"^spiffe://opendepot/project/([^/]+)/build/([^/]+)/platform/(amd64|arm64)$")


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    project_id: str
    build_id: str
    platform: str

    @property
    def uri(self) -> str:
        return f"spiffe://opendepot/project/{self.project_id}/build/{self.build_id}/platform/{self.platform}"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    cert_pem: str
    key_pem: str
    ca_pem: str


def server_name(project_id: str) -> str:
    return f"{project_id}.{SERVER_NAME_SUFFIX}"


def project_of_server_name(name: str | None) -> str | None:
    if not name or not name.endswith("." + SERVER_NAME_SUFFIX):
        return None
    project_id = name[: -len(SERVER_NAME_SUFFIX) - 1]
    return project_id if looks_like_id(project_id) else None


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def common_name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def certificate_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, lifetime: dt.timedelta
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
    )


def new_project_ca(project_id: str) -> Secret:
    """A project's CA and the gateway's server certificate for the project's name, signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = common_name(f"opendepot project {project_id} CA")
    ca = (
        certificate_builder(ca_name, ca_name, ca_key, CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = server_name(project_id)
    server = (
        certificate_builder(common_name(name), ca_name, key, SERVER_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Secret(
        public={"ca": cert_pem(ca), "server": cert_pem(server) + cert_pem(ca)},
        private={"ca_key": key_pem(ca_key), "server_key": key_pem(key)},
    )


@dataclass(frozen=True, slots=True)
class LoadedCA:
    """A project's CA as parsed once per process (a project's CA never changes while the project lives)."""

    pem: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def write_if_changed(path: Path, text: str) -> None:
    """Atomically (a reader sees the old file or the new one), and only when the content differs; readable by
    its owner only, like everything in the data dir (certificates too: no one else needs them)."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(staging, 0o600)
    os.replace(staging, path)


class Authority:
    """Project CAs live in the store (`project-ca/<project>`, keys sealed: sealed/vault.py), so every node
    issues and checks the same certificates. `root` is this node's copy of what TLS needs as files (the
    gateway's server certificate and key, the CA certificate), written from the store; CA keys never."""

    def __init__(self, root: Path, vault: Vault) -> None:
        self.root = root
        self.vault = vault
        self._cas: dict[str, LoadedCA] = {}
        self._written: set[str] = set()
        self._absent: dict[str, float] = {}

    def project_dir(self, project_id: str) -> Path:
        if not looks_like_id(project_id):
            raise ValueError(f"not a project id: {project_id!r}")
        return self.root / project_id

    def ensure_placeholder(self) -> Path:
        """A certificate for the gateway's listener before SNI picks a project's; it verifies no one. Local
        to each node: no store needed."""
        target = self.root / "_placeholder"
        if not (target / "server.pem").exists():
            self._write_files(target, new_project_ca("placeholder"))
        (target / LEGACY_CA_KEY).unlink(missing_ok=True)  # earlier versions kept its CA key: never needed
        return target

    def ensure_project(self, project_id: str) -> Path:
        """The project's files, its CA made first if no node made it yet (safe against concurrent callers
        on every node: the first one stored wins)."""
        if project_id in self._written and (self.project_dir(project_id) / "server.pem").exists():
            return self.project_dir(project_id)
        secret = self._project_secret(project_id, create=True)
        assert secret is not None
        return self._materialize(project_id, secret)

    def existing_project(self, project_id: str) -> Path | None:
        """The project's files if some node made its CA; None for a name nobody made a CA for."""
        if project_id in self._written:
            return self.project_dir(project_id)
        # A name asked for again soon is answered from memory: the gateway's handshakes ask on the event loop.
        now = time.monotonic()
        if self._absent.get(project_id, 0.0) > now:
            return None
        secret = self._project_secret(project_id, create=False)
        if secret is None:
            if len(self._absent) > MAX_ABSENT:
                self._absent = {k: v for k, v in self._absent.items() if v > now}
            self._absent[project_id] = now + ABSENT_SECONDS
            return None
        return self._materialize(project_id, secret)

    @staticmethod
    def _secret_name(project_id: str) -> str:
        return f"project-ca/{project_id}"

    def _project_secret(self, project_id: str, create: bool) -> Secret | None:
        name = self._secret_name(project_id)
        secret = self.vault.get(name)
        if secret is not None:
            return secret
        legacy = self._legacy_files(project_id)
        if legacy is None and not create:
            return None
        return self.vault.get_or_create(name, lambda: legacy or new_project_ca(project_id))

    def _legacy_files(self, project_id: str) -> Secret | None:
        """A CA a single node made in its data dir before CAs lived in the store: imported as it is, so the
        certificates it issued keep verifying."""
        directory = self.project_dir(project_id)
        try:
            return Secret(
                public={
                    "ca": (directory / "ca.pem").read_text(),
                    "server": (directory / "server.pem").read_text(),
                },
                private={
                    "ca_key": (directory / LEGACY_CA_KEY).read_text(),
                    "server_key": (directory / "server-key.pem").read_text(),
                },
            )
        except FileNotFoundError:
            return None

    def _materialize(self, project_id: str, secret: Secret) -> Path:
        directory = self.project_dir(project_id)
        if project_id not in self._written or not (directory / "server.pem").exists():
            self._write_files(directory, secret)
            self._written.add(project_id)
        return directory

    @staticmethod
    def _write_files(directory: Path, secret: Secret) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_if_changed(directory / "ca.pem", secret.public["ca"])
        write_if_changed(directory / "server-key.pem", secret.private["server_key"])
        # Written last: its presence means the directory is complete.
        write_if_changed(directory / "server.pem", secret.public["server"])
        # Imported into the store: the CA key is not kept in clear on disk any longer.
        (directory / LEGACY_CA_KEY).unlink(missing_ok=True)

    def ca(self, project_id: str) -> LoadedCA:
        """The project's CA, read from the store and parsed once per process: issuing is on every build's
        connection path."""
        loaded = self._cas.get(project_id)
        if loaded is not None:
            return loaded
        secret = self._project_secret(project_id, create=True)
        assert secret is not None
        pem = secret.public["ca"]
        key = serialization.load_pem_private_key(secret.private["ca_key"].encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        loaded = LoadedCA(pem, x509.load_pem_x509_certificate(pem.encode()), key)
        self._cas[project_id] = loaded
        return loaded

    def issue_client(self, identity: ClientIdentity, lifetime: dt.timedelta) -> IssuedCertificate:
        authority = self.ca(identity.project_id)
        ca_pem, ca, ca_key = authority.pem, authority.cert, authority.key
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            certificate_builder(
                common_name(f"build {identity.build_id} {identity.platform}"), ca.subject, key, lifetime
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return IssuedCertificate(cert_pem=cert_pem(cert), key_pem=key_pem(key), ca_pem=ca_pem)

    def forget(self, project_id: str) -> None:
        self._cas.pop(project_id, None)
        self._written.discard(project_id)
        self.vault.delete(self._secret_name(project_id))
        shutil.rmtree(self.project_dir(project_id), ignore_errors=True)


def identity_of(cert_der: bytes) -> ClientIdentity | None:
    """The build a verified client certificate speaks for, from its URI SAN."""
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )
    except x509.ExtensionNotFound:
        return None
    for uri in uris:
        match = _IDENTITY.match(uri)
        if match:
            return ClientIdentity(project_id=match[1], build_id=match[2], platform=match[3])
    return None
