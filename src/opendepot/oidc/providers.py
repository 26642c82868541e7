"""CI providers: which issuer is whose, what identity a token's claims carry, and when a project's trust
policy matches it. Claim names are the providers' own (spec §2.5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROVIDERS = ("github", "buildkite", "circleci", "gitlab")
DEFAULT_ISSUERS = {
    "github": "https://token.actions.githubusercontent.com",
    "buildkite": "https://agent.buildkite.com",
    # CircleCI's issuer is per organization: https://oidc.circleci.com/org/<organization-uuid>.
    "circleci": "https://oidc.circleci.com/org",
    "gitlab": "https://gitlab.com",
}
# Issuers whose URL ends in an organization id under the configured base.
PER_ORGANIZATION = frozenset({"circleci"})


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified CI token: the provider, its issuer, and the claims trust policies compare."""

    provider: str
    issuer: str
    claims: Mapping[str, Any]

    def claim(self, name: str) -> str:
        value = self.claims.get(name)
        return value if isinstance(value, str) else ""


def provider_of(issuer: str, issuers: Mapping[str, str]) -> str | None:
    """Which configured provider issued this token: the exact issuer, or for CircleCI the base plus one
    path segment (the organization UUID)."""
    for provider, configured in issuers.items():
        base = configured.rstrip("/")
        if issuer.rstrip("/") == base and provider not in PER_ORGANIZATION:
            return provider
        if provider in PER_ORGANIZATION and issuer.startswith(base + "/"):
            rest = issuer[len(base) + 1 :].rstrip("/")
            if rest and "/" not in rest:
                return provider
    return None


def _same_repository(policy_value: str, full_path: str) -> bool:
    """A policy may name the repository as `name` or as `owner/name` (GitHub) / `group/project` (GitLab)."""
    policy_value, full_path = policy_value.lower(), full_path.lower()
    return policy_value == full_path or policy_value == full_path.rsplit("/", 1)[-1]


def matches(provider: str, policy: Mapping[str, str], identity: Identity) -> bool:
    if provider != identity.provider:
        return False
    if provider == "github":
        owner = identity.claim("repository_owner")
        return (
            bool(owner)
            and owner.lower() == policy["repository_owner"].lower()
            and identity.claim("repository").lower().startswith(owner.lower() + "/")
            and _same_repository(policy["repository"], identity.claim("repository"))
        )
    if provider == "buildkite":
        return (
            identity.claim("organization_slug") == policy["organization_slug"]
            and identity.claim("pipeline_slug") == policy["pipeline_slug"]
        )
    if provider == "circleci":
        organization = identity.issuer.rstrip("/").rsplit("/", 1)[-1]
        claimed_org = identity.claim("oidc.circleci.com/org-id") or organization
        return (
            organization.lower() == claimed_org.lower() == policy["organization_uuid"].lower()
            and identity.claim("oidc.circleci.com/project-id").lower() == policy["project_uuid"].lower()
        )
    if provider == "gitlab":
        namespace = identity.claim("namespace_path")
        return (
            bool(namespace)
            and namespace.lower() == policy["namespace_path"].lower()
            and _same_repository(policy["project_path"], identity.claim("project_path"))
        )
    return False
