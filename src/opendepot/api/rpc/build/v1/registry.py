"""depot.build.v1.RegistryService (spec §4.5): the project's images, as the registry's notifications
reported them; deletes go through the registry and then the store."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.api.rpc import convert
from opendepot.gen.depot.build.v1 import registry_connect
from opendepot.gen.depot.build.v1 import registry_pb as pb
from opendepot.registry import service as registry
from opendepot.registry.operations import no_registry

Ctx = RequestContext[Any, Any]


class RegistryService(registry_connect.RegistryService):
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def list_images(self, request: pb.ListImagesRequest, ctx: Ctx) -> pb.ListImagesResponse:
        who = caller()
        page = convert.page_of(request, registry.IMAGES_LIST)
        rows, token = await self.d.store.read(
            lambda s: registry.list_images(s, who, request.project_id, page)
        )
        return pb.ListImagesResponse(
            images=[
                pb.Image(
                    tag=r.tag,
                    digest=r.digest,
                    pushed_at=convert.timestamp(r.pushed_at),
                    size_bytes=r.size_bytes,
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def delete_image(self, request: pb.DeleteImageRequest, ctx: Ctx) -> pb.DeleteImageResponse:
        who = caller()
        if self.d.registry is None:
            raise no_registry()
        await self.d.registry.delete(who, request.project_id, list(request.image_tags))
        return pb.DeleteImageResponse()
