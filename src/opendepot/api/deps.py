"""What handlers need from the rest of the server, bundled once at startup."""

from __future__ import annotations

from dataclasses import dataclass

from opendepot.builds.steps import DEFAULT_LOG_CAP
from opendepot.pki.authority import Authority
from opendepot.projects.lifecycle import ProjectLifecycle
from opendepot.projects.service import Settings as ProjectSettings
from opendepot.registry.operations import Registry
from opendepot.store import Store

from .auth import Authenticator


@dataclass(frozen=True, slots=True)
class Deps:
    store: Store
    authn: Authenticator
    lifecycle: ProjectLifecycle
    project_settings: ProjectSettings
    public_url: str
    authority: Authority
    # None when the server runs no registry (--registry off, or docker-registry not installed).
    registry: Registry | None = None
    # --build-log-limit-mib: the CLI's own status reports count against it as the gateway's tap does.
    build_log_limit_bytes: int = DEFAULT_LOG_CAP
    # --max-builds-per-minute: CreateBuild's bound per organization (0: none).
    builds_per_minute: int = 0
