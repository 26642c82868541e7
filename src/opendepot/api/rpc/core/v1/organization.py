"""depot.core.v1.OrganizationService (spec §4.3)."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.gen.depot.core.v1 import organization_connect
from opendepot.gen.depot.core.v1 import organization_pb as pb
from opendepot.organizations import service as organizations


class OrganizationService(organization_connect.OrganizationService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def list_organizations(
        self, request: pb.ListOrganizationsRequest, ctx: RequestContext[Any, Any]
    ) -> pb.ListOrganizationsResponse:
        who = caller()
        rows = await self.d.store.read(lambda s: organizations.list_for(s, who))
        return pb.ListOrganizationsResponse(
            organizations=[
                pb.ListOrganizationsResponse.Organization(
                    org_id=o.id, name=o.name, created_at=convert.timestamp(o.created_at)
                )
                for o in rows
            ]
        )
