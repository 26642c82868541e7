"""Sealed secrets: what the store holds is unreadable without the operator's key, the first node to store a
secret wins, and a node started with another key stops with a clear message."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from opendepot.registry.keys import CERT_FILE, EVENTS_SECRET_FILE, KEY_FILE, Access, TokenSigner, _new_signer
from opendepot.sealed import queries
from opendepot.sealed.box import SecretKey, WrongSecretKey, load_key, new_key_text
from opendepot.sealed.vault import Secret, Vault
from opendepot.store import Store


def test_the_private_part_is_sealed_and_bound_to_its_name(store: Store, vault: Vault) -> None:
    vault.get_or_create("signer", lambda: Secret({"cert": "CERT"}, {"key": "the private key"}))
    row = store.read_now(lambda s: queries.get(s, "signer"))
    assert row is not None and b"the private key" not in row.sealed and "CERT" in row.public
    # A sealed value moved under another name does not open.
    with pytest.raises(WrongSecretKey):
        vault.key.open(row.sealed, "another-name")


def test_the_first_writer_wins(store: Store, vault: Vault) -> None:
    first = vault.get_or_create("shared", lambda: Secret(private={"value": "first"}))
    # Another node with the same key, racing: it made its own, but reads back the one stored first.
    other_node = Vault(store, vault.key)
    assert other_node.get_or_create("shared", lambda: Secret(private={"value": "second"})) == first
    assert other_node.get("shared") == Secret(private={"value": "first"})


def test_a_node_with_another_key_is_refused(store: Store, vault: Vault) -> None:
    vault.check_key()
    with pytest.raises(WrongSecretKey, match="same --secret-key"):
        Vault(store, SecretKey(new_key_text())).check_key()


def test_the_default_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secret-key"
    key = load_key("", path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    sealed = key.seal(b"x", "n")
    assert load_key("", path, create=True).open(sealed, "n") == b"x"  # the same key again
    with pytest.raises(FileNotFoundError):
        load_key("", tmp_path / "named-by-the-operator", create=False)
    with pytest.raises(ValueError, match="at least 32"):
        SecretKey("short")


def test_registry_signing_key_is_shared_and_imported_from_an_old_data_dir(
    tmp_path: Path, store: Store, vault: Vault
) -> None:
    # A data dir of an earlier version: the key, its certificate and the notification secret as files.
    old = _new_signer()
    directory = tmp_path / "a" / "registry"
    directory.mkdir(parents=True)
    (directory / KEY_FILE).write_text(old.private["key"])
    (directory / CERT_FILE).write_text(old.public["cert"])
    (directory / EVENTS_SECRET_FILE).write_text(old.private["events_secret"] + "\n")
    node_a = TokenSigner(vault, directory)
    node_a.write_cert()
    assert not (directory / KEY_FILE).exists() and not (directory / EVENTS_SECRET_FILE).exists()
    assert (directory / CERT_FILE).read_text() == old.public["cert"]
    assert node_a.events_secret == old.private["events_secret"]

    # Node B, its own data dir and only the store: the same key, so A's tokens verify with B's certificate.
    node_b = TokenSigner(Vault(store, vault.key), tmp_path / "b" / "registry")
    node_b.write_cert()
    assert node_b.key_id == node_a.key_id and node_b.http_secret == node_a.http_secret
    token, _ = node_a.sign("someone", [Access("repository", "p/img", ("push",))], dt.timedelta(minutes=5))
    public_key = x509.load_pem_x509_certificate(node_b.cert_path.read_bytes()).public_key()
    claims = jwt.decode(token, public_key, algorithms=["ES256"], audience="opendepot-registry")  # type: ignore[arg-type]
    assert claims["access"][0]["name"] == "p/img"
