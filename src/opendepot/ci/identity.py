"""A verified CI token as the providers' rules see it, and the field checks their policies share."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opendepot.errors import InvalidArgument


class Provider(Protocol):
    """What each provider module declares (github.py, buildkite.py, circleci.py, gitlab.py)."""

    NAME: str
    DEFAULT_ISSUER: str
    # The fields of a trust policy, in the order users give them.
    FIELDS: tuple[str, ...]
    # The issuer URL ends in an organization id under the configured base (CircleCI).
    PER_ORGANIZATION: bool

    def validate(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The claims to store for a new trust policy; InvalidArgument naming the bad field."""
        ...

    def matches(self, policy: Mapping[str, str], identity: Identity) -> bool: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified CI token: the provider, its issuer, and the claims trust policies compare."""

    provider: str
    issuer: str
    claims: Mapping[str, Any]

    def claim(self, name: str) -> str:
        value = self.claims.get(name)
        return value if isinstance(value, str) else ""


def required(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    return value


def uuid_of(field: str, value: str) -> str:
    value = required(field, value)
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidArgument(field, "must be a UUID (not CircleCI's friendly slug)") from exc


def matching(field: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    value = required(field, value)
    if not pattern.match(value):
        raise InvalidArgument(field, f"is not a valid {what}")
    return value


def same_repository(policy_value: str, full_path: str) -> bool:
    """A policy may name the repository as `name` or as `owner/name` (GitHub) / `group/project` (GitLab)."""
    policy_value, full_path = policy_value.lower(), full_path.lower()
    return policy_value == full_path or policy_value == full_path.rsplit("/", 1)[-1]
