"""Issuing builds' client certificates: the CA is parsed once per process and comes from the store, so every
node issues certificates the others' gateways accept; a build's certificate is handed out again rather than
signed anew on every GetBuildKitConnection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from opendepot.builders.access import BuilderAccess
from opendepot.pki.authority import LEGACY_CA_KEY, Authority, ClientIdentity, new_project_ca
from opendepot.sealed.vault import Vault
from opendepot.store import Store

PROJECT = "bcdfghjklm"


def issuer_of(pem: str) -> x509.Name:
    return x509.load_pem_x509_certificate(pem.encode()).issuer


def test_a_build_gets_its_certificate_again_and_another_build_its_own(
    tmp_path: Path, store: Store, vault: Vault
) -> None:
    access = BuilderAccess(store, Authority(tmp_path / "pki", vault), "127.0.0.1", 1)
    first = ClientIdentity(PROJECT, "bcdfghjkl0", "amd64")
    again = access._certificate(first)
    assert access._certificate(first) is again
    other = access._certificate(ClientIdentity(PROJECT, "bcdfghjkl1", "amd64"))
    assert other.cert_pem != again.cert_pem and other.key_pem != again.key_pem
    assert issuer_of(other.cert_pem) == issuer_of(again.cert_pem)


def test_two_nodes_with_their_own_data_dirs_share_the_project_ca(tmp_path: Path, vault: Vault) -> None:
    node_a, node_b = Authority(tmp_path / "a", vault), Authority(tmp_path / "b", vault)
    identity = ClientIdentity(PROJECT, "bcdfghjkl0", "amd64")
    issued = node_a.issue_client(identity, dt.timedelta(hours=1))
    # Node B's gateway never made this CA: it finds it in the store and writes the files TLS needs.
    directory = node_b.existing_project(PROJECT)
    assert directory is not None and directory.parent == tmp_path / "b"
    assert (directory / "ca.pem").read_text() == issued.ca_pem
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate(issued.cert_pem.encode()).verify_directly_issued_by(ca)
    # The CA's key stays in the store: no node writes it to disk.
    assert not (directory / LEGACY_CA_KEY).exists()
    assert not (node_a.project_dir(PROJECT) / LEGACY_CA_KEY).exists()
    # A name no node made a CA for gets none (the gateway refuses the handshake), and none is created.
    assert node_b.existing_project("bcdfghjkln") is None
    assert vault.get("project-ca/bcdfghjkln") is None


def test_forgetting_a_project_deletes_its_ca_from_the_store(tmp_path: Path, vault: Vault) -> None:
    authority = Authority(tmp_path / "pki", vault)
    directory = authority.ensure_project(PROJECT)
    authority.forget(PROJECT)
    assert not directory.exists()
    assert Authority(tmp_path / "other", vault).existing_project(PROJECT) is None


def test_a_ca_made_in_a_data_dir_before_the_store_kept_them_is_imported(tmp_path: Path, vault: Vault) -> None:
    # The layout of earlier versions: the CA key in clear beside the certificates.
    old = new_project_ca(PROJECT)
    directory = tmp_path / "pki" / PROJECT
    directory.mkdir(parents=True)
    (directory / "ca.pem").write_text(old.public["ca"])
    (directory / LEGACY_CA_KEY).write_text(old.private["ca_key"])
    (directory / "server.pem").write_text(old.public["server"])
    (directory / "server-key.pem").write_text(old.private["server_key"])

    issued = Authority(tmp_path / "pki", vault).issue_client(
        ClientIdentity(PROJECT, "bcdfghjkl0", "amd64"), dt.timedelta(hours=1)
    )
    assert issued.ca_pem == old.public["ca"]  # certificates issued before keep verifying
    stored = vault.get(f"project-ca/{PROJECT}")
    assert stored is not None and stored.private["ca_key"] == old.private["ca_key"]
    Authority(tmp_path / "pki", vault).ensure_project(PROJECT)
    assert not (directory / LEGACY_CA_KEY).exists()
    assert (directory / "server.pem").read_text() == old.public["server"]
