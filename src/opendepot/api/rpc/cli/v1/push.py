"""depot.cli.v1.PushService: answered, not implemented (see PUSH_UNSUPPORTED)."""

from __future__ import annotations

from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from opendepot.gen.depot.cli.v1 import push_connect


# Subclassing the generated Protocol gives its default methods, which raise `unimplemented`; the
# interceptor names the method in the message.
class PushService(push_connect.PushService):
    """`depot push` copies blobs through Depot's own blob host (blob.depot.dev), which no self-hosted server
    can stand in for (spec §5.6); say so, and what to use instead."""

    async def start_push(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, PUSH_UNSUPPORTED)

    async def finish_push(self, request: Any, ctx: Any) -> Any:
        raise ConnectError(Code.UNIMPLEMENTED, PUSH_UNSUPPORTED)


PUSH_UNSUPPORTED = (
    "depot push is not available with opendepot: it needs Depot's blob service. Build with --push, or copy a "
    "saved image with `skopeo copy` (pull credentials from `depot pull-token`)"
)
