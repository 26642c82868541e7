"""Per-project certificate authorities for the BuildKit gateway.

Each project has its own CA. The gateway presents, for the TLS server name `<project>.<suffix>`, a server
certificate signed by that CA, and accepts only client certificates signed by it. Each (build, platform)
gets a short-lived client certificate whose URI SAN names it:
`spiffe://opendepot/project/<project>/build/<build>/platform/<platform>`.

Files live under `<data-dir>/pki/<project>/`, keys mode 0600; API workers and the supervisor share them."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opendepot.ids import looks_like_id

SERVER_NAME_SUFFIX = "buildkit.opendepot.internal"
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=825)
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


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


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


@dataclass(frozen=True, slots=True)
class _LoadedCA:
    """A project's CA as parsed once; `stamp` (inode, mtime) tells whether the file was replaced since."""

    stamp: tuple[int, int]
    pem: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


class Authority:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cas: dict[str, _LoadedCA] = {}

    def project_dir(self, project_id: str) -> Path:
        if not looks_like_id(project_id):
            raise ValueError(f"not a project id: {project_id!r}")
        return self.root / project_id

    def ensure_placeholder(self) -> Path:
        """A certificate for the gateway's listener before SNI picks a project's; it verifies no one."""
        return self._ensure(self.root / "_placeholder", "placeholder")

    def ensure_project(self, project_id: str) -> Path:
        """Creates the project's CA and gateway certificate once; safe against concurrent callers."""
        return self._ensure(self.project_dir(project_id), project_id)

    def _ensure(self, target: Path, project_id: str) -> Path:
        if (target / "server.pem").exists():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{project_id}-", dir=self.root))
        try:
            self._write_project(project_id, staging)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / "server.pem").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _write_project(self, project_id: str, directory: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name(f"opendepot project {project_id} CA")
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
            certificate_builder(_name(name), ca_name, key, SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        os.chmod(directory, 0o700)
        self._write(directory / "ca.pem", _cert_pem(ca), 0o644)
        self._write(directory / "ca-key.pem", _key_pem(ca_key), 0o600)
        self._write(directory / "server-key.pem", _key_pem(key), 0o600)
        # Written last: its presence means the directory is complete.
        self._write(directory / "server.pem", _cert_pem(server) + _cert_pem(ca), 0o644)

    @staticmethod
    def _write(path: Path, text: str, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _ca(self, project_id: str) -> _LoadedCA:
        """The project's CA, read and parsed from disk only when it is new or was replaced (a stat per call
        instead of two reads and a key parse: issuing is on every build's connection path)."""
        directory = self.ensure_project(project_id)
        info = os.stat(directory / "ca-key.pem")
        stamp = (info.st_ino, info.st_mtime_ns)
        loaded = self._cas.get(project_id)
        if loaded is not None and loaded.stamp == stamp:
            return loaded
        pem = (directory / "ca.pem").read_text()
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        loaded = _LoadedCA(stamp, pem, x509.load_pem_x509_certificate(pem.encode()), key)
        self._cas[project_id] = loaded
        return loaded

    def issue_client(self, identity: ClientIdentity, lifetime: dt.timedelta) -> IssuedCertificate:
        authority = self._ca(identity.project_id)
        ca_pem, ca, ca_key = authority.pem, authority.cert, authority.key
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            certificate_builder(
                _name(f"build {identity.build_id} {identity.platform}"), ca.subject, key, lifetime
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return IssuedCertificate(cert_pem=_cert_pem(cert), key_pem=_key_pem(key), ca_pem=ca_pem)

    def forget(self, project_id: str) -> None:
        self._cas.pop(project_id, None)
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
