"""Certificates for the gateway -> builder link when builders run elsewhere (Kubernetes pods).

The builder's buildkitd serves TLS with a certificate from its project's CA (the gateway checks it against
that CA and the builder's name). It accepts only client certificates from the *link CA*, one per data dir,
which signs nothing but the gateway's own client certificate: a build's client certificate (from the
project CA) opens the gateway, never a builder directly."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from .authority import (
    CA_LIFETIME,
    SERVER_LIFETIME,
    Authority,
    IssuedCertificate,
    _cert_pem,
    _key_pem,
    _name,
    certificate_builder,
)

LINK_DIR = "_builder-links"


def builder_server_name(project_id: str, platform: str) -> str:
    return f"builder-{platform}.{project_id}.builders.opendepot.internal"


class BuilderLinks:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.directory = authority.root / LINK_DIR

    def ensure(self) -> Path:
        """The link CA and the gateway's client certificate, made once (safe against concurrent callers)."""
        if (self.directory / "client.pem").exists():
            return self.directory
        self.authority.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".links-", dir=self.authority.root))
        try:
            self._write(staging)
            try:
                os.rename(staging, self.directory)
            except OSError:
                if not (self.directory / "client.pem").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.directory

    def _write(self, directory: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("opendepot builder link CA")
        ca = (
            certificate_builder(ca_name, ca_name, ca_key, CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        client = (
            certificate_builder(_name("opendepot gateway"), ca_name, key, CA_LIFETIME)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        os.chmod(directory, 0o700)
        _write(directory / "ca.pem", _cert_pem(ca), 0o644)
        _write(directory / "client-key.pem", _key_pem(key), 0o600)
        # Written last: its presence means the directory is complete. The CA key is not kept: nothing else
        # is ever signed by it.
        _write(directory / "client.pem", _cert_pem(client), 0o644)

    def link_ca_pem(self) -> str:
        return (self.ensure() / "ca.pem").read_text()

    def issue_builder_server(self, project_id: str, platform: str) -> IssuedCertificate:
        """The builder's TLS server certificate, signed by its project's CA."""
        directory = self.authority.ensure_project(project_id)
        ca_pem = (directory / "ca.pem").read_text()
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        ca_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        name = builder_server_name(project_id, platform)
        cert = (
            certificate_builder(_name(name), ca.subject, key, SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return IssuedCertificate(cert_pem=_cert_pem(cert), key_pem=_key_pem(key), ca_pem=ca_pem)


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
