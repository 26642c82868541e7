"""Every service path of spec §3, each on its Connect application (one module per proto service beside
this one, at the path of its proto package)."""

from __future__ import annotations

from typing import Any

from connectrpc.server import ConnectASGIApplication

from opendepot.api.compression import QuickGzip
from opendepot.api.deps import Deps
from opendepot.api.guard import Limits
from opendepot.api.interceptor import CallInterceptor
from opendepot.api.nul import NoNulInStrings
from opendepot.api.rpc.build.v1.build import BuildService as BuildV1Service
from opendepot.api.rpc.build.v1.registry import RegistryService
from opendepot.api.rpc.buildkit.v1.buildkit import BuildKitService
from opendepot.api.rpc.cli.v1.build import BuildService as CliBuildService
from opendepot.api.rpc.cli.v1.push import PushService
from opendepot.api.rpc.cli.v1beta1.projects import ProjectsService
from opendepot.api.rpc.core.v1.build import BuildService as CoreBuildService
from opendepot.api.rpc.core.v1.organization import OrganizationService
from opendepot.api.rpc.core.v1.project import ProjectService
from opendepot.api.rpc.core.v1.usage import UsageService
from opendepot.builders.access import BuilderAccess
from opendepot.gen.depot.build.v1 import build_connect as build_v1
from opendepot.gen.depot.build.v1 import registry_connect as registry_v1
from opendepot.gen.depot.buildkit.v1 import buildkit_connect as buildkit_v1
from opendepot.gen.depot.cli.v1 import build_connect as cli_build_v1
from opendepot.gen.depot.cli.v1 import push_connect as cli_push_v1
from opendepot.gen.depot.cli.v1beta1 import login_connect as login_v1beta1
from opendepot.gen.depot.cli.v1beta1 import projects_connect as projects_v1beta1
from opendepot.gen.depot.core.v1 import build_connect as core_build_v1
from opendepot.gen.depot.core.v1 import organization_connect as org_v1
from opendepot.gen.depot.core.v1 import project_connect as project_v1
from opendepot.gen.depot.core.v1 import usage_connect as usage_v1

# The codec's own bound on one message; the guard holds each method to its smaller one before this.
READ_MAX_BYTES = Limits().largest_message


SERVICES = (
    project_v1.ProjectService,
    org_v1.OrganizationService,
    usage_v1.UsageService,
    core_build_v1.BuildService,
    build_v1.BuildService,
    registry_v1.RegistryService,
    buildkit_v1.BuildKitService,
    cli_build_v1.BuildService,
    cli_push_v1.PushService,
    login_v1beta1.LoginService,
    projects_v1beta1.ProjectsService,
)


def method_paths() -> set[str]:
    """Every `/<service>/<Method>` path of spec §3, from the generated descriptors."""
    return {f"/{svc.desc().type_name}/{m.name}" for svc in SERVICES for m in svc.desc().methods}


def request_stream_paths() -> set[str]:
    """The paths of methods whose request is a stream of messages (client or bidi streaming): the guard
    gives them an idle timeout where every other request must arrive whole within the body timeout."""
    return {
        f"/{svc.desc().type_name}/{m.name}"
        for svc in SERVICES
        for m in svc.desc().methods
        if m.method_kind in ("client_streaming", "bidi_streaming")
    }


def connect_apps(
    deps: Deps, machines: BuilderAccess, login: login_v1beta1.LoginService
) -> list[ConnectASGIApplication[Any]]:
    opts: dict[str, Any] = {
        "interceptors": [CallInterceptor(), NoNulInStrings()],
        "read_max_bytes": READ_MAX_BYTES,
        "compressions": [QuickGzip()],
    }
    return [
        project_v1.ProjectServiceASGIApplication(ProjectService(deps), **opts),
        org_v1.OrganizationServiceASGIApplication(OrganizationService(deps), **opts),
        usage_v1.UsageServiceASGIApplication(UsageService(deps), **opts),
        core_build_v1.BuildServiceASGIApplication(CoreBuildService(deps), **opts),
        build_v1.BuildServiceASGIApplication(BuildV1Service(deps), **opts),
        registry_v1.RegistryServiceASGIApplication(RegistryService(deps), **opts),
        buildkit_v1.BuildKitServiceASGIApplication(BuildKitService(deps, machines), **opts),
        cli_build_v1.BuildServiceASGIApplication(CliBuildService(deps, machines), **opts),
        cli_push_v1.PushServiceASGIApplication(PushService(), **opts),
        login_v1beta1.LoginServiceASGIApplication(login, **opts),
        projects_v1beta1.ProjectsServiceASGIApplication(ProjectsService(deps), **opts),
    ]
