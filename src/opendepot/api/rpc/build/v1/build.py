"""depot.build.v1.BuildService (spec §4.4): the sdk-node build API. Same build store as cli.v1, so a build
created here continues in the CLI with DEPOT_BUILD_ID and its build token (spec §5.10)."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.builds import service as builds
from opendepot.gen.depot.build.v1 import build_connect
from opendepot.gen.depot.build.v1 import build_pb as pb

Ctx = RequestContext[Any, Any]


class BuildService(build_connect.BuildService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def create_build(self, request: pb.CreateBuildRequest, ctx: Ctx) -> pb.CreateBuildResponse:
        who = caller()
        build, token = await self.d.store.run_short(
            lambda s: builds.create_build(s, who, request.project_id, [], self.d.builds_per_minute)
        )
        return pb.CreateBuildResponse(build_id=build.id, build_token=token)

    async def finish_build(self, request: pb.FinishBuildRequest, ctx: Ctx) -> pb.FinishBuildResponse:
        who = caller()
        result = request.result
        outcome = None
        if result is not None:
            outcome = (
                builds.Outcome.success()
                if result.field == "success"
                else builds.Outcome.failed(result.value.error)
            )
        await self.d.store.run_short(lambda s: builds.finish_build(s, who, request.build_id, outcome))
        return pb.FinishBuildResponse()

    async def get_build_steps(self, request: pb.GetBuildStepsRequest, ctx: Ctx) -> pb.GetBuildStepsResponse:
        who = caller()
        page = convert.page_of(request, builds.STEPS_LIST)
        rows, token = await self.d.store.read(
            lambda s: builds.list_steps(s, who, request.project_id, request.build_id, page)
        )
        step = pb.GetBuildStepsResponse.BuildStep
        return pb.GetBuildStepsResponse(
            build_steps=[
                step(
                    name=r.name,
                    digest=r.digest,
                    started_at=convert.timestamp(r.started_at) if r.started_at else None,
                    completed_at=convert.timestamp(r.completed_at) if r.completed_at else None,
                    cache_state=step.CacheState.CACHED if r.cached else step.CacheState.UNCACHED,
                    error=r.error or None,
                    has_logs=r.has_logs,
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def get_build_step_logs(
        self, request: pb.GetBuildStepLogsRequest, ctx: Ctx
    ) -> pb.GetBuildStepLogsResponse:
        who = caller()
        page = convert.page_of(request, builds.LOGS_LIST)
        rows, token = await self.d.store.read(
            lambda s: builds.step_logs(
                s, who, request.project_id, request.build_id, request.build_step_digest, page
            )
        )
        return pb.GetBuildStepLogsResponse(
            logs=[
                pb.GetBuildStepLogsResponse.Log(message=r.text, timestamp=convert.timestamp(r.logged_at))
                for r in rows
            ],
            next_page_token=token,
        )
