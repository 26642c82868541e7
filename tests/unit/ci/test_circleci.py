from __future__ import annotations

import pytest

from opendepot.ci import circleci
from opendepot.ci.identity import Identity
from opendepot.errors import InvalidArgument

ORG = "0d2a4b0e-6a4c-4a7e-9d2b-1f0c8c6d9e11"
PROJECT = "7e1f7f3c-3b8d-4a55-a0d6-5a1b8a7d2c44"
POLICY = {"organization_uuid": ORG, "project_uuid": PROJECT}


def token(org: str = ORG, **claims: str) -> Identity:
    return Identity("circleci", f"{circleci.DEFAULT_ISSUER}/{org}", claims)


def test_a_policy_names_uuids_not_slugs() -> None:
    assert circleci.validate({"organization_uuid": ORG.upper(), "project_uuid": PROJECT}) == POLICY
    with pytest.raises(InvalidArgument, match="UUID"):
        circleci.validate({"organization_uuid": "gh/acme", "project_uuid": PROJECT})


def test_the_issuer_names_the_organization() -> None:
    assert circleci.PER_ORGANIZATION
    assert circleci.matches(POLICY, token(**{"oidc.circleci.com/project-id": PROJECT}))
    other_org = "11111111-1111-1111-1111-111111111111"
    assert not circleci.matches(POLICY, token(other_org, **{"oidc.circleci.com/project-id": PROJECT}))
    # The org-id claim, when present, must agree with the issuer.
    claims = {"oidc.circleci.com/project-id": PROJECT, "oidc.circleci.com/org-id": other_org}
    assert not circleci.matches(POLICY, token(**claims))
