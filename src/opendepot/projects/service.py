"""Project management. Synchronous functions of a Session: one call, one transaction (Store.run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from opendepot.auth import Principal
from opendepot.clock import utcnow
from opendepot.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from opendepot.ids import new_id
from opendepot.organizations import queries as org_queries
from opendepot.organizations.models import Organization
from opendepot.pagination import Cursor, PageRequest, next_token
from opendepot.validation import require_id, require_text

from . import queries
from .models import Project, TrustPolicy
from .policy import (
    DEFAULT_CACHE,
    DEFAULT_HARDWARE,
    CachePolicyInput,
    CacheSetting,
    check_hardware,
    check_region,
    check_trust_policy,
    resolve_cache,
)

MAX_NAME_LENGTH = 255
MAX_TRUST_POLICIES = 100
PROJECTS_LIST = "projects"


@dataclass(frozen=True, slots=True)
class Settings:
    regions: tuple[str, ...]
    default_region: str


# What BuildKit may grant a build that asks (`--allow`) when the operator allows it for a project.
ENTITLEMENTS = ("network.host", "security.insecure")


def entitlements_of(project: Project) -> tuple[str, ...]:
    return tuple(e for e in project.allowed_entitlements.split(",") if e)


def set_entitlements(session: Session, project_id: str, entitlements: Sequence[str]) -> Project:
    """Operator only (an admin command on the store): entitlements loosen the builder sandbox."""
    unknown = sorted(set(entitlements) - set(ENTITLEMENTS))
    if unknown:
        raise InvalidArgument(
            "entitlement", f"unknown: {', '.join(unknown)}; known: {', '.join(ENTITLEMENTS)}"
        )
    project = queries.get(session, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    project.allowed_entitlements = ",".join(e for e in ENTITLEMENTS if e in entitlements)
    return project


def cache_of(project: Project) -> CacheSetting:
    return CacheSetting(keep_bytes=project.cache_keep_bytes, keep_days=project.cache_keep_days)


def _check_project(project: Project | None, principal: Principal, project_id: str) -> Project:
    if project is None:
        raise NotFound(f"project {project_id!r} not found")
    principal.require_project_access(project.organization_id, project.id)
    return project


def load_project(session: Session, principal: Principal, project_id: str) -> Project:
    """The project, if this principal may see it: `not_found` if it does not exist, else access rules."""
    return _check_project(queries.get(session, require_id("project_id", project_id)), principal, project_id)


def read_project(connection: Connection | Session, principal: Principal, project_id: str) -> Project:
    """As load_project, for read-only callers: a detached copy."""
    project = queries.get_detached(connection, require_id("project_id", project_id))
    return _check_project(project, principal, project_id)


def load_managed_project(session: Session, principal: Principal, project_id: str, action: str) -> Project:
    project = load_project(session, principal, project_id)
    principal.require_organization(project.organization_id, action)
    return project


def list_projects(
    session: Session, principal: Principal, page: PageRequest, region_id: str | None
) -> tuple[Sequence[Project], str | None]:
    principal.require_listing("projects")
    rows = queries.page(
        session,
        principal.organization_id,
        limit=page.size + 1,
        after=page.after,
        region_id=region_id or None,
        only_project_id=principal.project_id,
    )
    token = next_token(PROJECTS_LIST, [Cursor(p.created_at, p.id) for p in rows], page.size)
    return rows[: page.size], token


def list_projects_with_organizations(
    session: Session, principal: Principal
) -> Sequence[tuple[Project, Organization]]:
    principal.require_listing("projects")
    return queries.with_organizations(session, principal.organization_id, principal.project_id)


def create_project(
    session: Session,
    principal: Principal,
    settings: Settings,
    *,
    name: str,
    organization_id: str | None,
    region_id: str,
    cache_policy: CachePolicyInput | None,
    hardware: str | None,
) -> Project:
    name = require_text("name", name, MAX_NAME_LENGTH)
    organization_id = organization_id or principal.organization_id
    principal.require_organization(organization_id, "create projects")
    if org_queries.get(session, organization_id) is None:
        raise NotFound(f"organization {organization_id!r} not found")
    project = Project(
        id=new_id(),
        organization_id=organization_id,
        name=name,
        region_id=check_region(region_id or settings.default_region, settings.regions),
        hardware=check_hardware(hardware) or DEFAULT_HARDWARE,
        created_at=utcnow(),
    )
    cache = resolve_cache(cache_policy, DEFAULT_CACHE)
    project.cache_keep_bytes, project.cache_keep_days = cache.keep_bytes, cache.keep_days
    session.add(project)
    session.flush()
    return project


def update_project(
    session: Session,
    principal: Principal,
    settings: Settings,
    project_id: str,
    *,
    name: str | None,
    region_id: str | None,
    cache_policy: CachePolicyInput | None,
    hardware: str | None,
) -> Project:
    """Only fields that are present change (proto3 `optional` presence)."""
    project = load_managed_project(session, principal, project_id, "update projects")
    if name is not None:
        project.name = require_text("name", name, MAX_NAME_LENGTH)
    if region_id is not None:
        project.region_id = check_region(region_id, settings.regions)
    if hardware is not None:
        project.hardware = check_hardware(hardware) or DEFAULT_HARDWARE
    cache = resolve_cache(cache_policy, cache_of(project))
    project.cache_keep_bytes, project.cache_keep_days = cache.keep_bytes, cache.keep_days
    session.flush()
    return project


def check_delete_allowed(session: Session, principal: Principal, project_id: str) -> Project:
    return load_managed_project(session, principal, project_id, "delete projects")


def delete_project(session: Session, principal: Principal, project_id: str) -> Project:
    project = check_delete_allowed(session, principal, project_id)
    queries.delete_project(session, project.id)
    return project


@dataclass(frozen=True, slots=True)
class ResetTarget:
    project: Project
    organization_name: str


def reset_target(session: Session, principal: Principal, project_id: str) -> ResetTarget:
    """Resetting the cache is open to the project's own tokens too: it is part of building in it."""
    project = load_project(session, principal, project_id)
    organization = org_queries.get(session, project.organization_id)
    return ResetTarget(project, organization.name if organization else "")


def list_trust_policies(session: Session, principal: Principal, project_id: str) -> Sequence[TrustPolicy]:
    project = load_managed_project(session, principal, project_id, "read trust policies")
    return queries.trust_policies(session, project.id)


def add_trust_policy(
    session: Session, principal: Principal, project_id: str, provider: str | None, fields: dict[str, str]
) -> TrustPolicy:
    project = load_managed_project(session, principal, project_id, "manage trust policies")
    claims = check_trust_policy(provider, fields)
    assert provider is not None
    existing = queries.trust_policies(session, project.id)
    if any(p.provider == provider and p.claims == claims for p in existing):
        raise AlreadyExists(f"project {project.id} already has this {provider} trust policy")
    if len(existing) >= MAX_TRUST_POLICIES:
        raise ResourceExhausted(f"a project can have at most {MAX_TRUST_POLICIES} trust policies")
    policy = TrustPolicy(
        id=new_id(), project_id=project.id, provider=provider, claims=claims, created_at=utcnow()
    )
    session.add(policy)
    session.flush()
    return policy


def remove_trust_policy(
    session: Session, principal: Principal, project_id: str, trust_policy_id: str
) -> None:
    project = load_managed_project(session, principal, project_id, "manage trust policies")
    policy = queries.get_trust_policy(session, project.id, require_id("trust_policy_id", trust_policy_id))
    if policy is None:
        raise NotFound(f"trust policy {trust_policy_id!r} not found in project {project.id}")
    queries.delete_trust_policy(session, policy.id)
