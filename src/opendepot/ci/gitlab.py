"""GitLab CI."""

from __future__ import annotations

import re
from collections.abc import Mapping

from opendepot.errors import InvalidArgument

from .identity import Identity, matching, same_repository

NAME = "gitlab"
DEFAULT_ISSUER = "https://gitlab.com"
FIELDS = ("namespace_path", "project_path")
PER_ORGANIZATION = False
# Group paths nest: "group/subgroup"; a project path is "group/…/project" or the bare project name.
_PATH = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*$")


def validate(fields: Mapping[str, str]) -> dict[str, str]:
    namespace = matching("gitlab.namespace_path", fields["namespace_path"], _PATH, "GitLab group path")
    project = matching("gitlab.project_path", fields["project_path"], _PATH, "GitLab project path")
    parent, _, _name = project.rpartition("/")
    if parent and parent.lower() != namespace.lower():
        raise InvalidArgument("gitlab.project_path", "names a different group than namespace_path")
    return {"namespace_path": namespace, "project_path": project}


def matches(policy: Mapping[str, str], identity: Identity) -> bool:
    namespace = identity.claim("namespace_path")
    return (
        bool(namespace)
        and namespace.lower() == policy["namespace_path"].lower()
        and same_repository(policy["project_path"], identity.claim("project_path"))
    )
