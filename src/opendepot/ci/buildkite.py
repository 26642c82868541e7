"""Buildkite."""

from __future__ import annotations

import re
from collections.abc import Mapping

from .identity import Identity, matching

NAME = "buildkite"
DEFAULT_ISSUER = "https://agent.buildkite.com"
FIELDS = ("organization_slug", "pipeline_slug")
PER_ORGANIZATION = False
_SLUG = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def validate(fields: Mapping[str, str]) -> dict[str, str]:
    return {
        "organization_slug": matching(
            "buildkite.organization_slug", fields["organization_slug"], _SLUG, "Buildkite slug"
        ),
        "pipeline_slug": matching(
            "buildkite.pipeline_slug", fields["pipeline_slug"], _SLUG, "Buildkite slug"
        ),
    }


def matches(policy: Mapping[str, str], identity: Identity) -> bool:
    return (
        identity.claim("organization_slug") == policy["organization_slug"]
        and identity.claim("pipeline_slug") == policy["pipeline_slug"]
    )
