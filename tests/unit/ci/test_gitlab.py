from __future__ import annotations

import pytest

from opendepot.ci import gitlab
from opendepot.ci.identity import Identity
from opendepot.errors import InvalidArgument

POLICY = {"namespace_path": "acme/platform", "project_path": "web"}


def token(**claims: str) -> Identity:
    return Identity("gitlab", gitlab.DEFAULT_ISSUER, claims)


def test_a_policy_names_a_group_and_a_project_in_it() -> None:
    assert gitlab.validate({"namespace_path": "acme/platform", "project_path": "acme/platform/web"})
    with pytest.raises(InvalidArgument, match="different group"):
        gitlab.validate({"namespace_path": "acme/platform", "project_path": "acme/other/web"})


def test_nested_groups_match_by_full_path() -> None:
    assert gitlab.matches(POLICY, token(namespace_path="acme/platform", project_path="acme/platform/web"))
    assert not gitlab.matches(POLICY, token(namespace_path="acme", project_path="acme/web"))
    assert not gitlab.matches(POLICY, token(project_path="acme/platform/web"))
