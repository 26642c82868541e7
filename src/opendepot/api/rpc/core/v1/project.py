"""depot.core.v1.ProjectService (spec §4.1)."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.gen.depot.core.v1 import project_connect
from opendepot.gen.depot.core.v1 import project_pb as pb
from opendepot.pagination import page_request
from opendepot.projects import service as projects
from opendepot.tokens import service as tokens

Ctx = RequestContext[Any, Any]


class ProjectService(project_connect.ProjectService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def list_projects(self, request: pb.ListProjectsRequest, ctx: Ctx) -> pb.ListProjectsResponse:
        who = caller()
        page = page_request(
            projects.PROJECTS_LIST,
            request.page_size if request.has_field("page_size") else None,
            request.page_token if request.has_field("page_token") else None,
        )
        region = request.region_id if request.has_field("region_id") else None
        rows, next_token = await self.d.store.read(lambda s: projects.list_projects(s, who, page, region))
        return pb.ListProjectsResponse(
            projects=[convert.project_out(p) for p in rows], next_page_token=next_token
        )

    async def get_project(self, request: pb.GetProjectRequest, ctx: Ctx) -> pb.GetProjectResponse:
        who = caller()
        project = await self.d.store.read_lookup(lambda c: projects.read_project(c, who, request.project_id))
        return pb.GetProjectResponse(project=convert.project_out(project))

    async def create_project(self, request: pb.CreateProjectRequest, ctx: Ctx) -> pb.CreateProjectResponse:
        who = caller()
        hardware = convert.hardware_in(request.hardware) if request.has_field("hardware") else None
        cache = convert.cache_policy_in(request.cache_policy) if request.cache_policy is not None else None
        project = await self.d.store.run(
            lambda s: projects.create_project(
                s,
                who,
                self.d.project_settings,
                name=request.name,
                organization_id=request.organization_id or None,
                region_id=request.region_id,
                cache_policy=cache,
                hardware=hardware,
            )
        )
        return pb.CreateProjectResponse(project=convert.project_out(project))

    async def update_project(self, request: pb.UpdateProjectRequest, ctx: Ctx) -> pb.UpdateProjectResponse:
        who = caller()
        hardware = convert.hardware_in(request.hardware) if request.has_field("hardware") else None
        cache = convert.cache_policy_in(request.cache_policy) if request.cache_policy is not None else None
        project = await self.d.store.run(
            lambda s: projects.update_project(
                s,
                who,
                self.d.project_settings,
                request.project_id,
                name=request.name if request.has_field("name") else None,
                region_id=request.region_id if request.has_field("region_id") else None,
                cache_policy=cache,
                hardware=hardware,
            )
        )
        return pb.UpdateProjectResponse(project=convert.project_out(project))

    async def delete_project(self, request: pb.DeleteProjectRequest, ctx: Ctx) -> pb.DeleteProjectResponse:
        who = caller()
        await self.d.lifecycle.delete(who, request.project_id)
        return pb.DeleteProjectResponse()

    async def reset_project(self, request: pb.ResetProjectRequest, ctx: Ctx) -> pb.ResetProjectResponse:
        who = caller()
        await self.d.lifecycle.reset_cache(who, request.project_id)
        return pb.ResetProjectResponse()

    async def list_trust_policies(
        self, request: pb.ListTrustPoliciesRequest, ctx: Ctx
    ) -> pb.ListTrustPoliciesResponse:
        who = caller()
        rows = await self.d.store.read(lambda s: projects.list_trust_policies(s, who, request.project_id))
        return pb.ListTrustPoliciesResponse(trust_policies=[convert.trust_policy_out(p) for p in rows])

    async def add_trust_policy(
        self, request: pb.AddTrustPolicyRequest, ctx: Ctx
    ) -> pb.AddTrustPolicyResponse:
        who = caller()
        provider, fields = convert.trust_policy_in(request.provider)
        policy = await self.d.store.run(
            lambda s: projects.add_trust_policy(s, who, request.project_id, provider, fields)
        )
        return pb.AddTrustPolicyResponse(trust_policy=convert.trust_policy_out(policy))

    async def remove_trust_policy(
        self, request: pb.RemoveTrustPolicyRequest, ctx: Ctx
    ) -> pb.RemoveTrustPolicyResponse:
        who = caller()
        await self.d.store.run(
            lambda s: projects.remove_trust_policy(s, who, request.project_id, request.trust_policy_id)
        )
        return pb.RemoveTrustPolicyResponse()

    async def list_tokens(self, request: pb.ListTokensRequest, ctx: Ctx) -> pb.ListTokensResponse:
        who = caller()
        rows = await self.d.store.read(lambda s: tokens.list_project_tokens(s, who, request.project_id))
        return pb.ListTokensResponse(
            tokens=[pb.ListTokensResponse.Token(token_id=t.id, description=t.description) for t in rows]
        )

    async def create_token(self, request: pb.CreateTokenRequest, ctx: Ctx) -> pb.CreateTokenResponse:
        who = caller()
        token, secret = await self.d.store.run(
            lambda s: tokens.create_project_token(s, who, request.project_id, request.description)
        )
        return pb.CreateTokenResponse(token_id=token.id, secret=secret)

    async def update_token(self, request: pb.UpdateTokenRequest, ctx: Ctx) -> pb.UpdateTokenResponse:
        who = caller()
        await self.d.store.run(lambda s: tokens.update_token(s, who, request.token_id, request.description))
        return pb.UpdateTokenResponse()

    async def delete_token(self, request: pb.DeleteTokenRequest, ctx: Ctx) -> pb.DeleteTokenResponse:
        who = caller()
        await self.d.store.run(lambda s: tokens.delete_token(s, who, request.token_id))
        return pb.DeleteTokenResponse()
