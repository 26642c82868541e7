from __future__ import annotations

from opendepot.auth import TokenKind
from opendepot.ids import ALPHABET, ID_LENGTH, looks_like_id, new_id
from opendepot.tokens.secrets import hash_secret, new_secret


def test_ids_use_depots_alphabet() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == ID_LENGTH and set(i) <= set(ALPHABET) and looks_like_id(i) for i in ids)
    assert not looks_like_id("aeiou12345") and not looks_like_id("../../etc")


def test_secrets_carry_their_kind_and_are_hashed() -> None:
    org, project = new_secret(TokenKind.ORGANIZATION), new_secret(TokenKind.PROJECT)
    assert org.startswith("odo_") and project.startswith("odp_")
    assert len(org) >= 4 + 43
    assert hash_secret(org) != hash_secret(project) and len(hash_secret(org)) == 64
    assert hash_secret(org) == hash_secret(org)


def test_login_ids_are_shell_safe() -> None:
    from opendepot.logins.service import new_login_id

    ids = {new_login_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 32 and i.isalnum() and i.isascii() for i in ids)
