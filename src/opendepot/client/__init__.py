"""opendepot's Python SDK: every Depot service as the Node SDK exposes them, sync (`Depot`) and async
(`AsyncDepot`), on the generated Connect clients (fully typed).

    from opendepot.client import Depot, core_v1
    with Depot() as depot:                       # DEPOT_API_URL and DEPOT_TOKEN by default
        for project in depot.iter_projects():
            print(project.project_id, project.name)
        depot.core.v1.ProjectService.get_project(core_v1.GetProjectRequest(project_id="…"))

Errors are `DepotError` (connectrpc's ConnectError): `.code` is the Connect code, `.message` the text."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import SimpleNamespace, TracebackType
from typing import Any, Self, TypeVar

from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from opendepot.gen.depot.build.v1 import build_connect as build_v1_connect
from opendepot.gen.depot.build.v1 import build_pb as build_v1
from opendepot.gen.depot.build.v1 import registry_connect
from opendepot.gen.depot.build.v1 import registry_pb as registry_v1
from opendepot.gen.depot.buildkit.v1 import buildkit_connect
from opendepot.gen.depot.buildkit.v1 import buildkit_pb as buildkit_v1
from opendepot.gen.depot.cli.v1 import build_connect as cli_build_connect
from opendepot.gen.depot.cli.v1 import build_pb as cli_v1
from opendepot.gen.depot.cli.v1beta1 import login_connect, projects_connect
from opendepot.gen.depot.core.v1 import build_connect as core_build_connect
from opendepot.gen.depot.core.v1 import build_pb as core_build_v1
from opendepot.gen.depot.core.v1 import organization_connect, project_connect, usage_connect
from opendepot.gen.depot.core.v1 import organization_pb as organization_v1
from opendepot.gen.depot.core.v1 import project_pb as core_v1
from opendepot.gen.depot.core.v1 import usage_pb as usage_v1

DepotError = ConnectError
T = TypeVar("T")
# Without DEPOT_API_URL: the opendepot server on this machine (its default --listen), never Depot's hosted
# API, which would receive the request and whatever DEPOT_TOKEN the user holds for Depot.
DEFAULT_URL = "http://127.0.0.1:8080"

__all__ = [
    "AsyncDepot",
    "Depot",
    "DepotError",
    "build_v1",
    "buildkit_v1",
    "cli_v1",
    "core_build_v1",
    "core_v1",
    "organization_v1",
    "registry_v1",
    "usage_v1",
]


class _Bearer:
    """Adds `Authorization: Bearer <token>` to every call (sync and async clients alike)."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def _add(self, ctx: RequestContext[Any, Any]) -> None:
        if self.token:
            ctx.request_headers["authorization"] = f"Bearer {self.token}"

    def on_start_sync(self, ctx: RequestContext[Any, Any], /) -> None:
        self._add(ctx)

    def on_end_sync(self, token: None, ctx: RequestContext[Any, Any], error: Exception | None, /) -> None:
        return None

    async def on_start(self, ctx: RequestContext[Any, Any], /) -> None:
        self._add(ctx)

    async def on_end(self, token: None, ctx: RequestContext[Any, Any], error: Exception | None, /) -> None:
        return None


def _settings(base_url: str | None, token: str | None) -> tuple[str, str | None]:
    url = (base_url or os.environ.get("DEPOT_API_URL") or DEFAULT_URL).rstrip("/")
    return url, token if token is not None else os.environ.get("DEPOT_TOKEN")


# Where each service sits, as in the Node SDK: depot.<package>.<version>.<Service>.
_SERVICES: tuple[tuple[str, str, str, Any], ...] = (
    ("core", "v1", "ProjectService", project_connect),
    ("core", "v1", "OrganizationService", organization_connect),
    ("core", "v1", "UsageService", usage_connect),
    ("core", "v1", "BuildService", core_build_connect),
    ("build", "v1", "BuildService", build_v1_connect),
    ("build", "v1", "RegistryService", registry_connect),
    ("buildkit", "v1", "BuildKitService", buildkit_connect),
    ("cli", "v1", "BuildService", cli_build_connect),
    ("cli", "v1beta1", "ProjectsService", projects_connect),
    ("cli", "v1beta1", "LoginService", login_connect),
)


def _attach(owner: object, suffix: str, url: str, token: str | None, timeout_ms: int | None) -> list[Any]:
    """Sets owner.<package>.<version>.<Service> to generated clients (suffix "Sync" or ""); returns them."""
    clients = []
    for package, version, service, module in _SERVICES:
        namespace = getattr(owner, package, None) or SimpleNamespace()
        setattr(owner, package, namespace)
        versions = getattr(namespace, version, None) or SimpleNamespace()
        setattr(namespace, version, versions)
        client = getattr(module, f"{service}Client{suffix}")(
            url, interceptors=[_Bearer(token)], timeout_ms=timeout_ms
        )
        setattr(versions, service, client)
        clients.append(client)
    return clients


def _pages(fetch: Callable[[str | None], tuple[Sequence[T], str | None]]) -> Iterator[T]:
    """Follows next_page_token until it is empty."""
    token: str | None = None
    while True:
        items, token = fetch(token)
        yield from items
        if not token:
            return


class Depot:
    """The synchronous client. `depot.core.v1.ProjectService.list_projects(request)` and so on."""

    core: Any
    build: Any
    buildkit: Any
    cli: Any

    def __init__(
        self, base_url: str | None = None, token: str | None = None, *, timeout_ms: int | None = None
    ):
        self.base_url, self.token = _settings(base_url, token)
        self._clients = _attach(self, "Sync", self.base_url, self.token, timeout_ms)

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def iter_projects(self, page_size: int = 100) -> Iterator[core_v1.Project]:
        def fetch(token: str | None) -> tuple[Sequence[core_v1.Project], str | None]:
            page = self.core.v1.ProjectService.list_projects(
                core_v1.ListProjectsRequest(page_size=page_size, page_token=token)
            )
            return page.projects, page.next_page_token

        return _pages(fetch)

    def iter_builds(self, project_id: str, page_size: int = 100) -> Iterator[core_build_v1.Build]:
        def fetch(token: str | None) -> tuple[Sequence[core_build_v1.Build], str | None]:
            page = self.core.v1.BuildService.list_builds(
                core_build_v1.ListBuildsRequest(project_id=project_id, page_size=page_size, page_token=token)
            )
            return page.builds, page.next_page_token

        return _pages(fetch)

    def iter_build_steps(
        self, project_id: str, build_id: str, page_size: int = 100
    ) -> Iterator[build_v1.GetBuildStepsResponse.BuildStep]:
        def fetch(token: str | None) -> tuple[Sequence[build_v1.GetBuildStepsResponse.BuildStep], str | None]:
            page = self.build.v1.BuildService.get_build_steps(
                build_v1.GetBuildStepsRequest(
                    project_id=project_id, build_id=build_id, page_size=page_size, page_token=token
                )
            )
            return page.build_steps, page.next_page_token

        return _pages(fetch)

    def iter_step_logs(
        self, project_id: str, build_id: str, digest: str, page_size: int = 1000
    ) -> Iterator[build_v1.GetBuildStepLogsResponse.Log]:
        def fetch(token: str | None) -> tuple[Sequence[build_v1.GetBuildStepLogsResponse.Log], str | None]:
            page = self.build.v1.BuildService.get_build_step_logs(
                build_v1.GetBuildStepLogsRequest(
                    project_id=project_id,
                    build_id=build_id,
                    build_step_digest=digest,
                    page_size=page_size,
                    page_token=token,
                )
            )
            return page.logs, page.next_page_token

        return _pages(fetch)

    def iter_images(self, project_id: str, page_size: int = 100) -> Iterator[registry_v1.Image]:
        def fetch(token: str | None) -> tuple[Sequence[registry_v1.Image], str | None]:
            page = self.build.v1.RegistryService.list_images(
                registry_v1.ListImagesRequest(project_id=project_id, page_size=page_size, page_token=token)
            )
            return page.images, page.next_page_token

        return _pages(fetch)

    def iter_project_usage(
        self, start_at: Any, end_at: Any, page_size: int = 100
    ) -> Iterator[usage_v1.ProjectUsage]:
        """Every project's figures for [start_at, end_at) (google.protobuf.Timestamp values)."""

        def fetch(token: str | None) -> tuple[Sequence[usage_v1.ProjectUsage], str | None]:
            page = self.core.v1.UsageService.list_project_usage(
                usage_v1.ListProjectUsageRequest(
                    start_at=start_at, end_at=end_at, page_size=page_size, page_token=token
                )
            )
            return page.usage, page.next_page_token or None

        return _pages(fetch)


class AsyncDepot:
    """The asynchronous client: the same services, awaitable."""

    core: Any
    build: Any
    buildkit: Any
    cli: Any

    def __init__(
        self, base_url: str | None = None, token: str | None = None, *, timeout_ms: int | None = None
    ):
        self.base_url, self.token = _settings(base_url, token)
        self._clients = _attach(self, "", self.base_url, self.token, timeout_ms)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.close()

    async def iter_projects(self, page_size: int = 100) -> AsyncIterator[core_v1.Project]:
        token: str | None = None
        while True:
            page = await self.core.v1.ProjectService.list_projects(
                core_v1.ListProjectsRequest(page_size=page_size, page_token=token)
            )
            for project in page.projects:
                yield project
            if not page.next_page_token:
                return
            token = page.next_page_token
