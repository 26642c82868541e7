"""depot.cli.v1beta1.ProjectsService (spec §4.8), as `depot projects list` and `depot cache reset` call it."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.gen.depot.cli.v1beta1 import projects_connect
from opendepot.gen.depot.cli.v1beta1 import projects_pb as pb
from opendepot.projects import service as projects

Ctx = RequestContext[Any, Any]


class ProjectsService(projects_connect.ProjectsService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def list_projects(self, request: pb.ListProjectsRequest, ctx: Ctx) -> pb.ListProjectsResponse:
        """No pagination fields exist here: the CLI expects every project it can reach (onboarding)."""
        who = caller()
        rows = await self.d.store.read(lambda s: projects.list_projects_with_organizations(s, who))
        return pb.ListProjectsResponse(
            projects=[
                pb.ListProjectsResponse.Project(id=p.id, name=p.name, org_id=o.id, org_name=o.name)
                for p, o in rows
            ]
        )

    async def reset_project_cache(
        self, request: pb.ResetProjectCacheRequest, ctx: Ctx
    ) -> pb.ResetProjectCacheResponse:
        who = caller()
        target = await self.d.lifecycle.reset_cache(who, request.project_id)
        return pb.ResetProjectCacheResponse(name=target.project.name, org_name=target.organization_name)
