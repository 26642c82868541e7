"""depot.core.v1.UsageService (spec §4.2): figures from what opendepot metered (see usage/service.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.errors import InvalidArgument
from opendepot.gen.depot.core.v1 import usage_connect
from opendepot.gen.depot.core.v1 import usage_pb as pb
from opendepot.pagination import page_request
from opendepot.usage import service as usage

Ctx = RequestContext[Any, Any]


def _period(request: Any) -> usage.Period:
    return usage.period(_when(request.start_at, "start_at"), _when(request.end_at, "end_at"))


def _when(ts: Any, field: str) -> datetime | None:
    if ts is None:
        return None
    try:
        return ts.to_datetime()  # type: ignore[no-any-return]
    except (OverflowError, ValueError):  # past datetime's range (year 9999's last half-microsecond on)
        raise InvalidArgument(field, "is out of range") from None


def project_usage_out(f: usage.ProjectFigures) -> pb.ProjectUsage:
    return pb.ProjectUsage(
        project_id=f.project_id,
        build_count=f.build_count,
        build_duration_seconds=f.build_duration_seconds,
        layer_cache_size_gb=f.layer_cache_size_gb,
    )


class UsageService(usage_connect.UsageService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def get_project_usage(
        self, request: pb.GetProjectUsageRequest, ctx: Ctx
    ) -> pb.GetProjectUsageResponse:
        who = caller()
        period = _period(request)
        figures = await self.d.store.read(lambda s: usage.project_usage(s, who, request.project_id, period))
        return pb.GetProjectUsageResponse(usage=project_usage_out(figures))

    async def list_project_usage(
        self, request: pb.ListProjectUsageRequest, ctx: Ctx
    ) -> pb.ListProjectUsageResponse:
        who = caller()
        period = _period(request)
        page = page_request(
            usage.PROJECT_USAGE_LIST,
            request.page_size if request.has_field("page_size") else None,
            request.page_token if request.has_field("page_token") else None,
        )
        rows, token = await self.d.store.read(lambda s: usage.list_project_usage(s, who, period, page))
        return pb.ListProjectUsageResponse(
            usage=[project_usage_out(r) for r in rows], next_page_token=token or ""
        )

    async def get_usage(self, request: pb.GetUsageRequest, ctx: Ctx) -> pb.GetUsageResponse:
        who = caller()
        period = _period(request)
        result = await self.d.store.read(lambda s: usage.organization_usage(s, who, period))
        return pb.GetUsageResponse(
            period_start=convert.timestamp(period.start),
            period_end=convert.timestamp(period.end),
            container_build=[
                pb.ContainerBuildUsage(
                    project_name=f.project_name,
                    build_count=f.build_count,
                    minutes_saved=f.minutes_saved,
                    minutes_billed=f.minutes_billed,
                )
                for f in result.projects
            ],
            storage=[
                pb.StorageUsage(storage_type="cache", total_gb=result.cache_gb_average),
                pb.StorageUsage(storage_type="registry", total_gb=result.registry_gb),
            ],
        )
