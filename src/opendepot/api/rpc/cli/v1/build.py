"""depot.cli.v1.BuildService (spec §4.7, §5.1, §5.11): the build lifecycle as the CLI and depot-go use it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from connectrpc.request import RequestContext
from protobuf import Oneof

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.builders.access import BuilderAccess, Connection
from opendepot.buildkit.status import events as status_events
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.builds.platform import DEFAULT, Platform
from opendepot.builds.status import CANCELED, ERROR, FAILED, RUNNING, SUCCESS
from opendepot.builds.steps import LogChunk, VertexUpdate
from opendepot.errors import FailedPrecondition, InvalidArgument
from opendepot.gen.depot.cli.v1 import build_connect
from opendepot.gen.depot.cli.v1 import build_pb as pb
from opendepot.pagination import page_request
from opendepot.registry import service as registry
from opendepot.registry.operations import no_registry

Ctx = RequestContext[Any, Any]
DEFAULT_LIST = 50
# A status message up to this size is recorded on the loop's thread (Store.run_short): a few rows' work.
SMALL_STATUS_BYTES = 16 << 10
STATUS: dict[str, pb.BuildStatus] = {
    RUNNING: pb.BuildStatus.RUNNING,
    SUCCESS: pb.BuildStatus.FINISHED,
    FAILED: pb.BuildStatus.FAILED,
    ERROR: pb.BuildStatus.FAILED,
    CANCELED: pb.BuildStatus.CANCELED,
}
PLATFORM = {
    pb.BuilderPlatform.UNSPECIFIED: DEFAULT,
    pb.BuilderPlatform.AMD64: Platform.AMD64,
    pb.BuilderPlatform.ARM64: Platform.ARM64,
}


def options_in(options: list[pb.BuildOptions]) -> list[dict[str, Any]]:
    return [json.loads(o.to_json()) for o in options]


def platform_in(value: pb.BuilderPlatform) -> str:
    platform = PLATFORM.get(value)
    if platform is None:
        raise InvalidArgument("platform", f"unknown value {int(value)}")
    return platform


def finish_outcome(result: Oneof[Any, Any] | None) -> builds.Outcome | None:
    if result is None:
        return None
    if result.field == "success":
        return builds.Outcome.success()
    if result.field == "canceled":
        return builds.Outcome.canceled()
    return builds.Outcome.failed(result.value.error)


class BuildService(build_connect.BuildService):
    def __init__(self, deps: Deps, machines: BuilderAccess) -> None:
        self.d = deps
        self.machines = machines

    def _url(self, build: Build) -> str:
        return f"{self.d.public_url}/projects/{build.project_id}/builds/{build.id}"

    async def create_build(self, request: pb.CreateBuildRequest, ctx: Ctx) -> pb.CreateBuildResponse:
        who = caller()
        if (
            request.required_engine is not None
            and request.required_engine.engine is not None
            and request.required_engine.engine.field == "dagger"
        ):
            raise FailedPrecondition(
                "opendepot runs BuildKit builders only; the dagger engine is not available"
            )
        options = options_in(list(request.options))
        saves = self.d.registry is not None and registry.uses_registry(options)
        if saves:
            registry.save_tags(options)  # refuses a bad --save-tag before anything is written
        quota = self.d.registry.settings.quota_bytes if saves and self.d.registry is not None else 0
        project_id, per_minute = request.project_id or None, self.d.builds_per_minute
        if quota and self.d.registry is not None:
            # What the registry's storage holds beyond the image list (pushes by digest, blobs alone): a
            # clear refusal now instead of BuildKit's bare 403 when the build pushes.
            pushable = await self.d.store.read(lambda s: registry.pushable_project(s, who, project_id))
            if pushable is not None:
                await self.d.registry.refuse_over_storage_quota([pushable])
        build, token = await self.d.store.run_short(
            lambda s: (
                registry.create_saving_build(s, who, project_id, options, quota, per_minute)
                if quota
                else builds.create_build(s, who, project_id, options, per_minute)
            )
        )
        response = pb.CreateBuildResponse(
            build_id=build.id,
            build_token=token,
            build_url=self._url(build),
            project_id=build.project_id,
            registry=pb.Registry(load_using_registry=saves),
        )
        if saves and self.d.registry is not None:
            # buildkitd pushes these tags; the CLI answers its credential requests with the build token.
            host = self.d.registry.host
            response.additional_tags = [
                pb.CreateBuildResponse.Tag(tag=ref, push=True)
                for ref in registry.save_references(host, build)
            ]
            basic = base64.b64encode(f"{registry.PULL_USER}:{token}".encode()).decode()
            response.additional_credentials = [pb.CreateBuildResponse.Credential(host=host, token=basic)]
        return response

    async def get_pull_info(self, request: pb.GetPullInfoRequest, ctx: Ctx) -> pb.GetPullInfoResponse:
        who = caller()
        if self.d.registry is None:
            raise no_registry()
        host = self.d.registry.host
        info = await self.d.store.run(lambda s: registry.pull_info(s, who, request.build_id, host))
        return pb.GetPullInfoResponse(
            reference=info.reference,
            username=info.username,
            password=info.password,
            options=[pb.BuildOptions.from_json(json.dumps(o)) for o in info.build.options],
            save_for_load=registry.save_for_load(info.build.options),
            registry_host=host,
        )

    async def get_pull_token(self, request: pb.GetPullTokenRequest, ctx: Ctx) -> pb.GetPullTokenResponse:
        who = caller()
        if self.d.registry is None:
            raise no_registry()
        secret, _expires = await self.d.store.run(
            lambda s: registry.pull_token(s, who, request.project_id or None, request.build_id or None)
        )
        return pb.GetPullTokenResponse(token=secret, registry_host=self.d.registry.host)

    async def get_build(self, request: pb.GetBuildRequest, ctx: Ctx) -> pb.GetBuildResponse:
        who = caller()
        build = await self.d.store.read(lambda s: builds.load_build(s, who, request.build_id))
        return pb.GetBuildResponse(build_id=build.id, project_id=build.project_id, build_url=self._url(build))

    async def finish_build(self, request: pb.FinishBuildRequest, ctx: Ctx) -> pb.FinishBuildResponse:
        who = caller()
        outcome = finish_outcome(request.result)
        await self.d.store.run_short(lambda s: builds.finish_build(s, who, request.build_id, outcome))
        return pb.FinishBuildResponse()

    async def get_build_kit_connection(
        self, request: pb.GetBuildKitConnectionRequest, ctx: Ctx
    ) -> pb.GetBuildKitConnectionResponse:
        who = caller()
        engine = request.required_engine.engine if request.required_engine is not None else None
        if engine is not None and engine.field == "dagger":
            raise FailedPrecondition(
                "opendepot runs BuildKit builders only; the dagger engine is not available"
            )
        connection = await self.machines.acquire(who, request.build_id, platform_in(request.platform))
        if connection is None:
            pending: Oneof[Literal["pending"], pb.GetBuildKitConnectionResponse.PendingConnection] = Oneof(
                "pending", pb.GetBuildKitConnectionResponse.PendingConnection(wait_ms=self.machines.wait_ms)
            )
            return pb.GetBuildKitConnectionResponse(connection=pending)
        ready: Oneof[Literal["active"], pb.GetBuildKitConnectionResponse.ActiveConnection] = Oneof(
            "active", active(connection)
        )
        return pb.GetBuildKitConnectionResponse(connection=ready)

    async def report_build_health(
        self, request: pb.ReportBuildHealthRequest, ctx: Ctx
    ) -> pb.ReportBuildHealthResponse:
        who = caller()
        platform = platform_in(request.platform) if request.platform else None
        if await self.d.store.read(lambda s: builds.heartbeat_due(s, who, request.build_id, platform)):
            await self.d.store.run_short(lambda s: builds.heartbeat(s, who, request.build_id, platform))
        # cancels_at stays unset: an empty Timestamp would cancel the build at once (spec §6.5).
        return pb.ReportBuildHealthResponse()

    async def report_status_stream(
        self, request: AsyncIterator[pb.ReportStatusStreamRequest], ctx: Ctx
    ) -> pb.ReportStatusStreamResponse:
        who = caller()
        # Kept as received (bounded per build); the steps view reads them. A message for a build the
        # caller does not reach ends the stream with that error.
        async for message in request:
            build_id = message.build_id
            payloads = [status.to_binary() for status in message.statuses]
            vertices: list[VertexUpdate] = []
            logs: list[LogChunk] = []
            for status in message.statuses:
                v, lg = status_events(status)
                vertices += v
                logs += lg

            def record(
                session: Any,
                build_id: str = build_id,
                payloads: list[bytes] = payloads,
                vertices: list[VertexUpdate] = vertices,
                logs: list[LogChunk] = logs,
            ) -> bool:
                return builds.record_status(
                    session, who, build_id, payloads, vertices, logs, self.d.build_log_limit_bytes
                )

            # The CLI's own messages are a handful of `[depot]` vertices, and its stream ends just as its
            # solve starts: a small one is written on the loop's thread (no hop to a worker and back).
            if sum(map(len, payloads)) <= SMALL_STATUS_BYTES:
                await self.d.store.run_short(record)
                # Written inline, it held the loop: a stream of many small messages (a hostile client's)
                # lets the worker's other requests run between them.
                await asyncio.sleep(0)
            else:
                await self.d.store.run(record)
        return pb.ReportStatusStreamResponse()

    async def list_builds(self, request: pb.ListBuildsRequest, ctx: Ctx) -> pb.ListBuildsResponse:
        who = caller()
        page = page_request(
            builds.BUILDS_LIST,
            request.page_size or None,
            request.page_token or None,
            default_size=DEFAULT_LIST,
        )
        rows, token = await self.d.store.read(lambda s: builds.list_builds(s, who, request.project_id, page))
        return pb.ListBuildsResponse(
            builds=[
                pb.Build(
                    id=b.id,
                    status=STATUS[b.status],
                    created_at=convert.timestamp(b.created_at),
                    finished_at=convert.timestamp(b.finished_at) if b.finished_at else None,
                )
                for b in rows
            ],
            next_page_token=token or "",
        )

    # Legacy RPCs from older CLIs (spec §5.12): accepted for builds the caller reaches, and ignored.
    async def report_timings(self, request: pb.ReportTimingsRequest, ctx: Ctx) -> pb.ReportTimingsResponse:
        await self._check(ctx, request.build_id)
        return pb.ReportTimingsResponse()

    async def report_status(self, request: pb.ReportStatusRequest, ctx: Ctx) -> pb.ReportStatusResponse:
        await self._check(ctx, request.build_id)
        return pb.ReportStatusResponse()

    async def report_build_context(
        self, request: pb.ReportBuildContextRequest, ctx: Ctx
    ) -> pb.ReportBuildContextResponse:
        await self._check(ctx, request.build_id)
        return pb.ReportBuildContextResponse()

    async def _check(self, ctx: Ctx, build_id: str) -> None:
        who = caller()
        await self.d.store.read(lambda s: builds.load_build(s, who, build_id))


def active(connection: Connection) -> pb.GetBuildKitConnectionResponse.ActiveConnection:
    """Both cert and ca_cert are always present: depot-go reads them without nil checks."""
    return pb.GetBuildKitConnectionResponse.ActiveConnection(
        endpoint=connection.endpoint,
        server_name=connection.server_name,
        cert=pb.Cert(cert=connection.cert_pem, key=connection.key_pem),
        ca_cert=pb.Cert(cert=connection.ca_pem),
    )
