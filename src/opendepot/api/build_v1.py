"""depot.build.v1.BuildService (spec §4.4): the sdk-node build API. Same build store as cli.v1, so a build
created here continues in the CLI with DEPOT_BUILD_ID and its build token (spec §5.10)."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.builds import service as builds
from opendepot.gen.depot.build.v1 import build_connect
from opendepot.gen.depot.build.v1 import build_pb as pb

from .deps import Deps

Ctx = RequestContext[Any, Any]


class BuildService(build_connect.BuildService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def create_build(self, request: pb.CreateBuildRequest, ctx: Ctx) -> pb.CreateBuildResponse:
        who = await self.d.authn.principal(ctx)
        build, token = await self.d.store.run(lambda s: builds.create_build(s, who, request.project_id, []))
        return pb.CreateBuildResponse(build_id=build.id, build_token=token)

    async def finish_build(self, request: pb.FinishBuildRequest, ctx: Ctx) -> pb.FinishBuildResponse:
        who = await self.d.authn.principal(ctx)
        result = request.result
        outcome = None
        if result is not None:
            outcome = (
                builds.Outcome.success()
                if result.field == "success"
                else builds.Outcome.failed(result.value.error)
            )
        await self.d.store.run(lambda s: builds.finish_build(s, who, request.build_id, outcome))
        return pb.FinishBuildResponse()
