"""depot.buildkit.v1.BuildKitService (spec §4.6): the low-level machine API, with cli.v1's semantics.
GetEndpoint streams `pending` until the builder runs, then one `active`, then ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from connectrpc.request import RequestContext
from protobuf import Oneof

from opendepot.api.calls import caller
from opendepot.api.deps import Deps
from opendepot.builders.access import BuilderAccess
from opendepot.builds import service as builds
from opendepot.builds.platform import DEFAULT, Platform
from opendepot.errors import InvalidArgument
from opendepot.gen.depot.buildkit.v1 import buildkit_connect
from opendepot.gen.depot.buildkit.v1 import buildkit_pb as pb

Ctx = RequestContext[Any, Any]
PLATFORM = {
    pb.Platform.UNSPECIFIED: DEFAULT,
    pb.Platform.AMD64: Platform.AMD64,
    pb.Platform.ARM64: Platform.ARM64,
}


def platform_in(value: pb.Platform) -> str:
    platform = PLATFORM.get(value)
    if platform is None:
        raise InvalidArgument("platform", f"unknown value {int(value)}")
    return platform


class BuildKitService(buildkit_connect.BuildKitService):
    def __init__(self, deps: Deps, machines: BuilderAccess) -> None:
        self.d = deps
        self.machines = machines

    async def get_endpoint(
        self, request: pb.GetEndpointRequest, ctx: Ctx
    ) -> AsyncIterator[pb.GetEndpointResponse]:
        who = caller()
        platform = platform_in(request.platform)
        while True:
            connection = await self.machines.acquire(who, request.build_id, platform)
            if connection is not None:
                active = pb.GetEndpointResponse.ActiveConnection(
                    endpoint=connection.endpoint,
                    server_name=connection.server_name,
                    cert=pb.CertificatePair(
                        cert=pb.PublicCertificate(cert=connection.cert_pem),
                        key=pb.PrivateKey(key=connection.key_pem),
                    ),
                    ca_cert=pb.PublicCertificate(cert=connection.ca_pem),
                )
                ready: Oneof[Literal["active"], pb.GetEndpointResponse.ActiveConnection] = Oneof(
                    "active", active
                )
                yield pb.GetEndpointResponse(connection=ready)
                return
            pending: Oneof[Literal["pending"], pb.GetEndpointResponse.PendingConnection] = Oneof(
                "pending", pb.GetEndpointResponse.PendingConnection()
            )
            yield pb.GetEndpointResponse(connection=pending)
            await asyncio.sleep(self.machines.wait_ms / 1000)

    async def report_health(
        self, request: AsyncIterator[pb.ReportHealthRequest], ctx: Ctx
    ) -> pb.ReportHealthResponse:
        who = caller()
        async for beat in request:
            build_id, platform = beat.build_id, platform_in(beat.platform)

            def renew(session: Any, build_id: str = build_id, platform: str = platform) -> None:
                builds.heartbeat(session, who, build_id, platform)

            await self.d.store.run(renew)
        return pb.ReportHealthResponse()

    async def release_endpoint(
        self, request: pb.ReleaseEndpointRequest, ctx: Ctx
    ) -> pb.ReleaseEndpointResponse:
        who = caller()
        platform = platform_in(request.platform)
        await self.d.store.run(lambda s: builds.release(s, who, request.build_id, platform))
        return pb.ReleaseEndpointResponse()
