"""Issuing builds' client certificates: the CA is parsed once and follows a replaced file; a build's
certificate is handed out again rather than signed anew on every GetBuildKitConnection."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from cryptography import x509

from opendepot.builders.access import BuilderAccess
from opendepot.pki.authority import Authority, ClientIdentity
from opendepot.store import Store

PROJECT = "bcdfghjklm"


def issuer_of(pem: str) -> x509.Name:
    return x509.load_pem_x509_certificate(pem.encode()).issuer


def test_a_build_gets_its_certificate_again_and_another_build_its_own(tmp_path: Path) -> None:
    access = BuilderAccess(Store(f"sqlite:///{tmp_path / 'db'}"), Authority(tmp_path / "pki"), "127.0.0.1", 1)
    first = ClientIdentity(PROJECT, "bcdfghjkl0", "amd64")
    again = access._certificate(first)
    assert access._certificate(first) is again
    other = access._certificate(ClientIdentity(PROJECT, "bcdfghjkl1", "amd64"))
    assert other.cert_pem != again.cert_pem and other.key_pem != again.key_pem
    assert issuer_of(other.cert_pem) == issuer_of(again.cert_pem)


def test_a_replaced_ca_is_read_again(tmp_path: Path) -> None:
    authority = Authority(tmp_path / "pki")
    identity = ClientIdentity(PROJECT, "bcdfghjkl0", "amd64")
    before = authority.issue_client(identity, dt.timedelta(hours=1))
    # Another process forgets the project and a new CA is made: this one must not sign with the old key.
    shutil.rmtree(authority.project_dir(PROJECT))
    authority.ensure_project(PROJECT)
    after = authority.issue_client(identity, dt.timedelta(hours=1))
    assert after.ca_pem != before.ca_pem
    ca = x509.load_pem_x509_certificate(after.ca_pem.encode())
    cert = x509.load_pem_x509_certificate(after.cert_pem.encode())
    cert.verify_directly_issued_by(ca)
