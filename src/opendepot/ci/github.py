"""GitHub Actions."""

from __future__ import annotations

import re
from collections.abc import Mapping

from opendepot.errors import InvalidArgument

from .identity import Identity, matching, required, same_repository

NAME = "github"
DEFAULT_ISSUER = "https://token.actions.githubusercontent.com"
FIELDS = ("repository_owner", "repository")
PER_ORGANIZATION = False
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def validate(fields: Mapping[str, str]) -> dict[str, str]:
    owner = matching("github.repository_owner", fields["repository_owner"], _OWNER, "GitHub owner")
    repository = required("github.repository", fields["repository"])
    # Accept "name" or "owner/name"; in the latter the owner must agree.
    repo_owner, _, repo_name = repository.rpartition("/")
    if repo_owner and repo_owner.lower() != owner.lower():
        raise InvalidArgument("github.repository", "names a different owner than repository_owner")
    matching("github.repository", repo_name, _REPO, "GitHub repository name")
    return {"repository_owner": owner, "repository": repository}


def matches(policy: Mapping[str, str], identity: Identity) -> bool:
    owner = identity.claim("repository_owner")
    return (
        bool(owner)
        and owner.lower() == policy["repository_owner"].lower()
        and identity.claim("repository").lower().startswith(owner.lower() + "/")
        and same_repository(policy["repository"], identity.claim("repository"))
    )
