from __future__ import annotations

import pytest

from opendepot.ci import github
from opendepot.ci.identity import Identity
from opendepot.errors import InvalidArgument

POLICY = {"repository_owner": "acme", "repository": "web"}


def token(**claims: str) -> Identity:
    return Identity("github", github.DEFAULT_ISSUER, claims)


def test_a_policy_names_owner_and_repository() -> None:
    assert github.validate({"repository_owner": "acme", "repository": "acme/web"}) == {
        "repository_owner": "acme",
        "repository": "acme/web",
    }
    with pytest.raises(InvalidArgument, match="different owner"):
        github.validate({"repository_owner": "acme", "repository": "other/web"})
    with pytest.raises(InvalidArgument, match="repository_owner"):
        github.validate({"repository_owner": "-bad", "repository": "web"})


def test_the_repository_must_belong_to_the_owner() -> None:
    assert github.matches(POLICY, token(repository_owner="Acme", repository="acme/web"))
    assert not github.matches(POLICY, token(repository_owner="acme", repository="acme/api"))
    assert not github.matches(POLICY, token(repository_owner="acme", repository="evil/web"))
    assert not github.matches(POLICY, token(repository="acme/web"))
