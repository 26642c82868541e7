"""Project settings as the domain sees them: hardware sizes, cache policy and trust policy checks."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from opendepot.errors import InvalidArgument

GIB = 1 << 30
DEFAULT_KEEP_GB = 50
DEFAULT_KEEP_DAYS = 14
MAX_KEEP_GB = 1 << 20
MAX_KEEP_DAYS = 36500

# Hardware sizes as "<cpus>x<memory GB>"; the API's HARDWARE_UNSPECIFIED means the default, 16x32.
HARDWARE_SIZES = ("16x32", "4x4", "8x8", "8x16", "32x64", "64x128", "96x192", "192x384")
DEFAULT_HARDWARE = "16x32"


@dataclass(frozen=True, slots=True)
class CachePolicyInput:
    """What the caller sent; None means absent. keep_gb wins when it is positive (spec §4.1)."""

    keep_bytes: int | None
    keep_gb: int
    keep_days: int


@dataclass(frozen=True, slots=True)
class CacheSetting:
    keep_bytes: int
    keep_days: int

    @property
    def keep_gb(self) -> int:
        return self.keep_bytes // GIB


DEFAULT_CACHE = CacheSetting(keep_bytes=DEFAULT_KEEP_GB * GIB, keep_days=DEFAULT_KEEP_DAYS)


def resolve_cache(policy: CachePolicyInput | None, current: CacheSetting) -> CacheSetting:
    """A size of zero keeps the current size: a caller that only changes keep_days sends no size."""
    if policy is None:
        return current
    if policy.keep_gb < 0:
        raise InvalidArgument("cache_policy.keep_gb", "must not be negative")
    if policy.keep_gb > MAX_KEEP_GB:
        raise InvalidArgument("cache_policy.keep_gb", f"must be at most {MAX_KEEP_GB}")
    if policy.keep_bytes is not None and policy.keep_bytes < 0:
        raise InvalidArgument("cache_policy.keep_bytes", "must not be negative")
    if policy.keep_bytes is not None and policy.keep_bytes > MAX_KEEP_GB * GIB:
        raise InvalidArgument("cache_policy.keep_bytes", f"must be at most {MAX_KEEP_GB} GiB")
    if policy.keep_days < 0:
        raise InvalidArgument("cache_policy.keep_days", "must not be negative (0 means no limit)")
    if policy.keep_days > MAX_KEEP_DAYS:
        raise InvalidArgument("cache_policy.keep_days", f"must be at most {MAX_KEEP_DAYS}")
    if policy.keep_gb > 0:
        keep_bytes = policy.keep_gb * GIB
    elif policy.keep_bytes:
        keep_bytes = policy.keep_bytes
    else:
        keep_bytes = current.keep_bytes
    return CacheSetting(keep_bytes=keep_bytes, keep_days=policy.keep_days)


def check_hardware(hardware: str | None) -> str | None:
    if hardware is not None and hardware not in HARDWARE_SIZES:
        raise InvalidArgument("hardware", "is not a known hardware size")
    return hardware


def check_region(region_id: str, regions: tuple[str, ...]) -> str:
    if region_id not in regions:
        raise InvalidArgument("region_id", f"must be one of {', '.join(regions)}")
    return region_id


TRUST_PROVIDERS = ("github", "buildkite", "circleci", "gitlab")
_GITHUB_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_GITHUB_REPO = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SLUG = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# GitLab group paths nest: "group/subgroup"; a project path is "group/…/project" or the bare project name.
_GITLAB_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*$")


def _required(field: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    return value


def _uuid(field: str, value: str) -> str:
    value = _required(field, value)
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise InvalidArgument(field, "must be a UUID (not CircleCI's friendly slug)") from exc


def _pattern(field: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    value = _required(field, value)
    if not pattern.match(value):
        raise InvalidArgument(field, f"is not a valid {what}")
    return value


def check_trust_policy(provider: str | None, fields: dict[str, str]) -> dict[str, Any]:
    """Validates one provider's fields and returns the claims to store."""
    if provider == "github":
        owner = _pattern("github.repository_owner", fields["repository_owner"], _GITHUB_OWNER, "GitHub owner")
        repository = _required("github.repository", fields["repository"])
        # Accept "name" or "owner/name"; in the latter the owner must agree.
        repo_owner, _, repo_name = repository.rpartition("/")
        if repo_owner and repo_owner.lower() != owner.lower():
            raise InvalidArgument("github.repository", "names a different owner than repository_owner")
        _pattern("github.repository", repo_name, _GITHUB_REPO, "GitHub repository name")
        return {"repository_owner": owner, "repository": repository}
    if provider == "buildkite":
        return {
            "organization_slug": _pattern(
                "buildkite.organization_slug", fields["organization_slug"], _SLUG, "Buildkite slug"
            ),
            "pipeline_slug": _pattern(
                "buildkite.pipeline_slug", fields["pipeline_slug"], _SLUG, "Buildkite slug"
            ),
        }
    if provider == "circleci":
        return {
            "organization_uuid": _uuid("circleci.organization_uuid", fields["organization_uuid"]),
            "project_uuid": _uuid("circleci.project_uuid", fields["project_uuid"]),
        }
    if provider == "gitlab":
        namespace = _pattern(
            "gitlab.namespace_path", fields["namespace_path"], _GITLAB_PATH, "GitLab group path"
        )
        project = _pattern("gitlab.project_path", fields["project_path"], _GITLAB_PATH, "GitLab project path")
        parent, _, _name = project.rpartition("/")
        if parent and parent.lower() != namespace.lower():
            raise InvalidArgument("gitlab.project_path", "names a different group than namespace_path")
        return {"namespace_path": namespace, "project_path": project}
    raise InvalidArgument("provider", "one of github, buildkite, circleci or gitlab is required")
