"""Which configured provider issued a CI token, and whether a trust policy matches its identity. Each
provider's own rules live in its module under `opendepot/ci/`."""

from __future__ import annotations

from collections.abc import Mapping

from opendepot.ci import DEFAULT_ISSUERS, PROVIDERS, Identity

__all__ = ["DEFAULT_ISSUERS", "PROVIDERS", "Identity", "matches", "provider_of"]


def provider_of(issuer: str, issuers: Mapping[str, str]) -> str | None:
    """Which configured provider issued this token: the exact issuer, or for CircleCI the base plus one
    path segment (the organization UUID)."""
    for provider, configured in issuers.items():
        base = configured.rstrip("/")
        if issuer.rstrip("/") == base and not _per_organization(provider):
            return provider
        if _per_organization(provider) and issuer.startswith(base + "/"):
            rest = issuer[len(base) + 1 :].rstrip("/")
            if rest and "/" not in rest:
                return provider
    return None


def _per_organization(provider: str) -> bool:
    module = PROVIDERS.get(provider)
    return module is not None and module.PER_ORGANIZATION


def matches(provider: str, policy: Mapping[str, str], identity: Identity) -> bool:
    module = PROVIDERS.get(provider)
    return provider == identity.provider and module is not None and module.matches(policy, identity)
