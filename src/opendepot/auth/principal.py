"""Who is calling, and what each kind of caller may reach. The rules live here, not in handlers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from opendepot.errors import PermissionDenied


class TokenKind(StrEnum):
    ORGANIZATION = "organization"
    PROJECT = "project"
    BUILD = "build"
    # Pulls its project's images from the registry, and nothing else (GetPullToken, GetPullInfo).
    PULL = "pull"
    # From `depot login`: acts for its organization as an organization token does.
    USER = "user"
    # A CI provider's OIDC token: builds and registry access in the projects whose trust policies match.
    OIDC = "oidc"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: TokenKind
    token_id: str
    organization_id: str
    project_id: str | None = None
    build_id: str | None = None
    # For OIDC: the projects whose trust policies match the CI identity.
    trusted_projects: frozenset[str] = frozenset()

    @property
    def is_organization(self) -> bool:
        return self.kind in (TokenKind.ORGANIZATION, TokenKind.USER)

    def require_organization(self, organization_id: str, action: str) -> None:
        """Managing projects, tokens and trust policies takes an organization token of that organization."""
        if not self.is_organization:
            raise PermissionDenied(f"a {self.kind} token cannot {action}; use an organization token")
        if organization_id != self.organization_id:
            raise PermissionDenied(f"this token cannot {action} in organization {organization_id}")

    def require_listing(self, what: str) -> None:
        """Listing an organization's projects, usage or organizations is not for the single-purpose tokens:
        a build token reaches its build, a pull token the registry, and nothing else."""
        if self.kind is TokenKind.BUILD:
            raise PermissionDenied(f"a build token cannot list {what}: it reaches only its own build")
        if self.kind is TokenKind.PULL:
            raise PermissionDenied(f"a pull token cannot list {what}: it only pulls images from the registry")

    def require_project_access(self, organization_id: str, project_id: str) -> None:
        """Reading a project and building in it are open to its organization and its own tokens."""
        if self.kind is TokenKind.BUILD:
            raise PermissionDenied("a build token reaches only its own build")
        if self.kind is TokenKind.PULL:
            raise PermissionDenied("a pull token only pulls images from the registry")
        if self.kind is TokenKind.OIDC:
            if project_id not in self.trusted_projects:
                raise PermissionDenied(
                    f"this CI identity is not trusted by project {project_id}: "
                    "add a trust policy that matches it"
                )
            return
        if organization_id != self.organization_id:
            raise PermissionDenied(f"this token has no access to project {project_id}")
        if self.project_id is not None and self.project_id != project_id:
            raise PermissionDenied(f"this token has no access to project {project_id}")

    def require_build_access(self, organization_id: str, project_id: str, build_id: str) -> None:
        """A build is reached by its own build token, or by a token that reaches its project."""
        if self.kind is TokenKind.BUILD:
            if self.build_id != build_id:
                raise PermissionDenied(f"this build token does not reach build {build_id}")
            return
        self.require_project_access(organization_id, project_id)
