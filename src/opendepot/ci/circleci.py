"""CircleCI. Its issuer is per organization: https://oidc.circleci.com/org/<organization-uuid>."""

from __future__ import annotations

from collections.abc import Mapping

from .identity import Identity, uuid_of

NAME = "circleci"
DEFAULT_ISSUER = "https://oidc.circleci.com/org"
FIELDS = ("organization_uuid", "project_uuid")
# The issuer URL ends in an organization id under the configured base.
PER_ORGANIZATION = True


def validate(fields: Mapping[str, str]) -> dict[str, str]:
    return {
        "organization_uuid": uuid_of("circleci.organization_uuid", fields["organization_uuid"]),
        "project_uuid": uuid_of("circleci.project_uuid", fields["project_uuid"]),
    }


def matches(policy: Mapping[str, str], identity: Identity) -> bool:
    organization = identity.issuer.rstrip("/").rsplit("/", 1)[-1]
    claimed_org = identity.claim("oidc.circleci.com/org-id") or organization
    return (
        organization.lower() == claimed_org.lower() == policy["organization_uuid"].lower()
        and identity.claim("oidc.circleci.com/project-id").lower() == policy["project_uuid"].lower()
    )
