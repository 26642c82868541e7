"""A throwaway CA and a server certificate for 127.0.0.1/localhost, for TLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from opendepot.pki.authority import cert_pem, certificate_builder, common_name, key_pem


def make_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """Returns (ca.pem, server.pem, server-key.pem)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = common_name("opendepot test CA")
    ca = (
        certificate_builder(ca_name, ca_name, ca_key, dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
    cert = (
        certificate_builder(common_name("localhost"), ca_name, key, dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
    )
    ca_path.write_text(cert_pem(ca))
    cert_path.write_text(cert_pem(cert))
    key_path.write_text(key_pem(key))
    return ca_path, cert_path, key_path
