"""The ASGI application: every service path of spec §3 on one app, plus /healthz."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.server import ConnectASGIApplication

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

from .build_v1 import BuildService as BuildV1Service
from .buildkit_v1 import BuildKitService
from .cli_build import BuildService as CliBuildService
from .cli_v1beta1 import ProjectsService
from .core_build import BuildService as CoreBuildService
from .core_organization import OrganizationService
from .core_project import ProjectService
from .core_usage import UsageService
from .deps import Deps
from .http import Receive, Scope, Send, respond_json
from .interceptor import CallInterceptor
from .registry_v1 import RegistryService

# Status reports carry raw build logs; allow large messages (spec §1.4).
READ_MAX_BYTES = 128 * 1024 * 1024


# Services that later work implements. Subclassing the generated Protocol gives its default methods,
# which raise `unimplemented`; the interceptor names the method in the message.
class _PushService(cli_push_v1.PushService):
    """`depot push` copies blobs through Depot's own blob host (blob.depot.dev), which no self-hosted server
    can stand in for (spec §5.6); say so, and what to use instead."""

    async def start_push(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, PUSH_UNSUPPORTED)

    async def finish_push(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, PUSH_UNSUPPORTED)


PUSH_UNSUPPORTED = (
    "depot push is not available with opendepot: it needs Depot's blob service. Build with --push, or copy a "
    "saved image with `skopeo copy` (pull credentials from `depot pull-token`)"
)


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


def connect_apps(
    deps: Deps, machines: BuilderAccess, login: login_v1beta1.LoginService
) -> list[ConnectASGIApplication[Any]]:
    opts: dict[str, Any] = {"interceptors": [CallInterceptor()], "read_max_bytes": READ_MAX_BYTES}
    return [
        project_v1.ProjectServiceASGIApplication(ProjectService(deps), **opts),
        org_v1.OrganizationServiceASGIApplication(OrganizationService(deps), **opts),
        usage_v1.UsageServiceASGIApplication(UsageService(deps), **opts),
        core_build_v1.BuildServiceASGIApplication(CoreBuildService(deps), **opts),
        build_v1.BuildServiceASGIApplication(BuildV1Service(deps), **opts),
        registry_v1.RegistryServiceASGIApplication(RegistryService(deps), **opts),
        buildkit_v1.BuildKitServiceASGIApplication(BuildKitService(deps, machines), **opts),
        cli_build_v1.BuildServiceASGIApplication(CliBuildService(deps, machines), **opts),
        cli_push_v1.PushServiceASGIApplication(_PushService(), **opts),
        login_v1beta1.LoginServiceASGIApplication(login, **opts),
        projects_v1beta1.ProjectsServiceASGIApplication(ProjectsService(deps), **opts),
    ]


# A plain HTTP endpoint beside the RPCs (the registry's token service and notifications).
HttpHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class Router:
    """Dispatches `/<package>.<Service>/<Method>` to that service's Connect application."""

    def __init__(
        self,
        apps: list[ConnectASGIApplication[Any]],
        methods: set[str],
        health: Callable[[], Awaitable[bool]],
        shared_page: Callable[[str], Awaitable[str | None]],
        routes: Mapping[str, HttpHandler] | None = None,
    ) -> None:
        self._shared_page = shared_page
        self._routes = dict(routes or {})
        self._apps = {app.path: app for app in apps}
        self._methods = methods
        self._health = health

    @property
    def service_paths(self) -> list[str]:
        return sorted(self._apps)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            ok = await self._health()
            await respond_json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable"})
            return
        route = self._routes.get(path) or next(
            (r for prefix, r in self._routes.items() if prefix.endswith("/") and path.startswith(prefix)),
            None,
        )
        if route is not None:
            await route(scope, receive, send)
            return
        if scope["method"] == "GET" and path.startswith("/shared/"):
            page = await self._shared_page(path.removeprefix("/shared/"))
            body = (page or "<!doctype html><p>This link is unknown or no longer shared.</p>").encode()
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200 if page else 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        service = "/" + path.lstrip("/").split("/", 1)[0]
        app = self._apps.get(service)
        if app is not None and path in self._methods:
            await app(scope, receive, send)
            return
        # Connect clients read the code from the body; 404 is the HTTP fallback for unimplemented.
        await respond_json(
            send, 404, {"code": "unimplemented", "message": f"no such service or method: {path}"}
        )
