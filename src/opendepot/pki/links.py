"""Certificates for the gateway -> builder link when builders run elsewhere (Kubernetes pods).

The builder's buildkitd serves TLS with a certificate from its project's CA (the gateway checks it against
that CA and the builder's name). It accepts only client certificates from the *link CA*, one per store (so
every node's gateway is the same client), which signs nothing but the gateway's own client certificate: a
build's client certificate (from the project CA) opens the gateway, never a builder directly."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from opendepot.sealed.vault import Secret

from .authority import (
    CA_LIFETIME,
    SERVER_LIFETIME,
    Authority,
    IssuedCertificate,
    cert_pem,
    certificate_builder,
    common_name,
    key_pem,
    write_if_changed,
)

LINK_DIR = "_builder-links"
SECRET_NAME = "builder-link-ca"  # noqa: S105 - a name


def builder_server_name(project_id: str, platform: str) -> str:
    return f"builder-{platform}.{project_id}.builders.opendepot.internal"


class BuilderLinks:
    """The link CA lives in the store (`builder-link-ca`, key sealed) like the project CAs: every node's
    gateway presents the same client certificate, which every builder pod accepts."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.directory = authority.root / LINK_DIR
        self._written = False

    def ensure(self) -> Path:
        """This node's copy of the link CA and the gateway's client certificate, made once among all nodes."""
        if self._written and (self.directory / "client.pem").exists():
            return self.directory
        secret = self.authority.vault.get_or_create(SECRET_NAME, lambda: self._legacy_files() or _new_link())
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_if_changed(self.directory / "ca.pem", secret.public["ca"])
        write_if_changed(self.directory / "client-key.pem", secret.private["client_key"])
        # Written last: its presence means the directory is complete.
        write_if_changed(self.directory / "client.pem", secret.public["client"])
        self._written = True
        return self.directory

    def _legacy_files(self) -> Secret | None:
        """Made by a single node in its data dir before the store kept it: imported as it is."""
        try:
            return Secret(
                public={
                    "ca": (self.directory / "ca.pem").read_text(),
                    "client": (self.directory / "client.pem").read_text(),
                },
                private={"client_key": (self.directory / "client-key.pem").read_text()},
            )
        except FileNotFoundError:
            return None

    def link_ca_pem(self) -> str:
        return (self.ensure() / "ca.pem").read_text()

    def issue_builder_server(self, project_id: str, platform: str) -> IssuedCertificate:
        """The builder's TLS server certificate, signed by its project's CA."""
        ca = self.authority.ca(project_id)
        key = ec.generate_private_key(ec.SECP256R1())
        name = builder_server_name(project_id, platform)
        cert = (
            certificate_builder(common_name(name), ca.cert.subject, key, SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        return IssuedCertificate(cert_pem=cert_pem(cert), key_pem=key_pem(key), ca_pem=ca.pem)


def _new_link() -> Secret:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = common_name("opendepot builder link CA")
    ca = (
        certificate_builder(ca_name, ca_name, ca_key, CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    client = (
        certificate_builder(common_name("opendepot gateway"), ca_name, key, CA_LIFETIME)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # The CA key is not kept: nothing else is ever signed by it.
    return Secret(
        public={"ca": cert_pem(ca), "client": cert_pem(client)}, private={"client_key": key_pem(key)}
    )
