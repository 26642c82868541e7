"""depot.core.v1.BuildService (spec §4.3): builds as the dashboard and sdk-node read them."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.builds import service as builds
from opendepot.builds.status import CANCELED, ERROR, FAILED, RUNNING, SUCCESS
from opendepot.gen.depot.core.v1 import build_connect
from opendepot.gen.depot.core.v1 import build_pb as pb
from opendepot.pagination import page_request

Ctx = RequestContext[Any, Any]
STATUS: dict[str, pb.Build.Status] = {
    RUNNING: pb.Build.Status.RUNNING,
    SUCCESS: pb.Build.Status.SUCCESS,
    FAILED: pb.Build.Status.FAILED,
    ERROR: pb.Build.Status.ERROR,
    CANCELED: pb.Build.Status.CANCELED,
}


def build_out(summary: builds.Summary) -> pb.Build:
    b = summary.build
    duration = None
    if b.started_at is not None and b.finished_at is not None:
        duration = int((b.finished_at - b.started_at).total_seconds())
    return pb.Build(
        build_id=b.id,
        status=STATUS[b.status],
        created_at=convert.timestamp(b.created_at),
        started_at=convert.timestamp(b.started_at) if b.started_at else None,
        finished_at=convert.timestamp(b.finished_at) if b.finished_at else None,
        build_duration_seconds=duration,
        saved_duration_seconds=int(summary.saved_seconds),
        cached_steps=summary.cached_steps,
        total_steps=summary.total_steps,
    )


class BuildService(build_connect.BuildService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def get_build(self, request: pb.GetBuildRequest, ctx: Ctx) -> pb.GetBuildResponse:
        who = caller()

        def read(s: Any) -> builds.Summary:
            return builds.summarize(s, [builds.load_build(s, who, request.build_id)])[0]

        return pb.GetBuildResponse(build=build_out(await self.d.store.read(read)))

    async def share_build(self, request: pb.ShareBuildRequest, ctx: Ctx) -> pb.ShareBuildResponse:
        who = caller()
        secret = await self.d.store.run(lambda s: builds.share_build(s, who, request.build_id))
        return pb.ShareBuildResponse(share_url=f"{self.d.public_url}/shared/{secret}")

    async def stop_sharing_build(
        self, request: pb.StopSharingBuildRequest, ctx: Ctx
    ) -> pb.StopSharingBuildResponse:
        who = caller()
        await self.d.store.run(lambda s: builds.stop_sharing(s, who, request.build_id))
        return pb.StopSharingBuildResponse()

    async def list_builds(self, request: pb.ListBuildsRequest, ctx: Ctx) -> pb.ListBuildsResponse:
        who = caller()
        page = page_request(
            builds.BUILDS_LIST,
            request.page_size if request.has_field("page_size") else None,
            request.page_token if request.has_field("page_token") else None,
        )

        def read(s: Any) -> tuple[list[builds.Summary], str | None]:
            rows, token = builds.list_builds(s, who, request.project_id, page)
            return builds.summarize(s, rows), token

        summaries, token = await self.d.store.read(read)
        return pb.ListBuildsResponse(builds=[build_out(x) for x in summaries], next_page_token=token or "")
