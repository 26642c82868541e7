"""Imports every domain's models so that the metadata (for migrations and tests) is complete."""

from opendepot.builders.models import Machine
from opendepot.builds.models import Build, Lease, StatusReport
from opendepot.dashboard.models import DashboardSession
from opendepot.logins.models import LoginRequest
from opendepot.nodes.models import SingularLease
from opendepot.oidc.models import TokenUse
from opendepot.organizations.models import Organization
from opendepot.projects.models import Project, TrustPolicy
from opendepot.registry.models import Image, Maintenance
from opendepot.sealed.models import SealedSecret
from opendepot.store.base import Base
from opendepot.tokens.models import Token
from opendepot.usage.models import CacheSample

metadata = Base.metadata

__all__ = [
    "Build",
    "CacheSample",
    "DashboardSession",
    "Image",
    "Lease",
    "LoginRequest",
    "Machine",
    "Maintenance",
    "Organization",
    "Project",
    "SealedSecret",
    "SingularLease",
    "StatusReport",
    "Token",
    "TokenUse",
    "TrustPolicy",
    "metadata",
]
