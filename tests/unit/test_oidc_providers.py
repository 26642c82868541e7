"""Which provider issued a CI token, and when a trust policy matches its claims."""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from opendepot.oidc.providers import DEFAULT_ISSUERS, Identity, matches, provider_of
from opendepot.oidc.service import use_key

ORG = "0d2a4b0e-6a4c-4a7e-9d2b-1f0c8c6d9e11"
PROJECT = "7e1f7f3c-3b8d-4a55-a0d6-5a1b8a7d2c44"


def test_issuers_map_to_providers() -> None:
    assert provider_of("https://token.actions.githubusercontent.com", DEFAULT_ISSUERS) == "github"
    assert provider_of("https://agent.buildkite.com/", DEFAULT_ISSUERS) == "buildkite"
    assert provider_of(f"https://oidc.circleci.com/org/{ORG}", DEFAULT_ISSUERS) == "circleci"
    assert provider_of("https://gitlab.com", DEFAULT_ISSUERS) == "gitlab"
    # CircleCI's base alone, or with more than the organization under it, is no issuer.
    assert provider_of("https://oidc.circleci.com/org", DEFAULT_ISSUERS) is None
    assert provider_of(f"https://oidc.circleci.com/org/{ORG}/x", DEFAULT_ISSUERS) is None
    assert provider_of("https://token.actions.githubusercontent.com.evil.example", DEFAULT_ISSUERS) is None


def github(owner: str, repository: str) -> Identity:
    claims = {"repository_owner": owner, "repository": repository}
    return Identity("github", DEFAULT_ISSUERS["github"], claims)


def test_github_policies_accept_bare_and_full_repository_names() -> None:
    for policy_repository in ("widgets", "acme/widgets", "Acme/Widgets"):
        policy = {"repository_owner": "ACME", "repository": policy_repository}
        assert matches("github", policy, github("acme", "acme/widgets"))
    policy = {"repository_owner": "acme", "repository": "widgets"}
    assert not matches("github", policy, github("acme", "acme/gadgets"))
    assert not matches("github", policy, github("other", "other/widgets"))
    # A repository claim under another owner than repository_owner is not trusted.
    assert not matches("github", policy, github("acme", "other/widgets"))
    assert not matches("buildkite", policy, github("acme", "acme/widgets"))


def test_circleci_gitlab_and_buildkite() -> None:
    circle = Identity(
        "circleci",
        f"https://oidc.circleci.com/org/{ORG}",
        {"oidc.circleci.com/org-id": ORG, "oidc.circleci.com/project-id": PROJECT},
    )
    assert matches("circleci", {"organization_uuid": ORG, "project_uuid": PROJECT}, circle)
    assert not matches("circleci", {"organization_uuid": PROJECT, "project_uuid": PROJECT}, circle)
    lying = Identity("circleci", f"https://oidc.circleci.com/org/{PROJECT}", dict(circle.claims))
    assert not matches("circleci", {"organization_uuid": ORG, "project_uuid": PROJECT}, lying)

    gitlab = Identity(
        "gitlab",
        "https://gitlab.com",
        {"namespace_path": "acme/platform", "project_path": "acme/platform/web"},
    )
    assert matches("gitlab", {"namespace_path": "acme/platform", "project_path": "acme/platform/web"}, gitlab)
    assert matches("gitlab", {"namespace_path": "acme/platform", "project_path": "web"}, gitlab)
    assert not matches("gitlab", {"namespace_path": "acme", "project_path": "web"}, gitlab)

    kite = Identity(
        "buildkite", "https://agent.buildkite.com", {"organization_slug": "acme", "pipeline_slug": "deploy"}
    )
    assert matches("buildkite", {"organization_slug": "acme", "pipeline_slug": "deploy"}, kite)
    assert not matches("buildkite", {"organization_slug": "acme", "pipeline_slug": "other"}, kite)


def test_a_token_without_jti_is_one_use_however_its_signature_is_spelt() -> None:
    """PyJWT accepts the signature segment with its base64 padding back; both spellings verify, so both
    must be the same use of the token (else a leaked token has a second replay window)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = f"https://oidc.circleci.com/org/{ORG}"
    claims: dict[str, object] = {"iss": issuer, "aud": "aud", "exp": 2**31}
    token = jwt.encode(claims, key, algorithm="ES256")
    signed, _, signature = token.rpartition(".")
    padded = f"{signed}.{signature}{'=' * (-len(signature) % 4)}"
    assert padded != token
    assert jwt.decode(padded, key.public_key(), algorithms=["ES256"], audience="aud") == claims
    identity = Identity("circleci", issuer, claims)
    assert use_key(identity, padded) == use_key(identity, token)
    # Another token (other claims) is another use.
    other = jwt.encode({**claims, "exp": 2**31 - 1}, key, algorithm="ES256")
    assert use_key(identity, other) != use_key(identity, token)
