"""depot.cli.v1beta1.LoginService (spec §5.7); its approval page is `api/http/login_page.py`."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from connectrpc.request import RequestContext

from opendepot.api.deps import Deps
from opendepot.errors import ResourceExhausted
from opendepot.gen.depot.cli.v1beta1 import login_connect
from opendepot.gen.depot.cli.v1beta1 import login_pb as pb
from opendepot.logins import service as logins

Ctx = RequestContext[Any, Any]
POLL_SECONDS = 0.5
# FinishLogin is public and its stream polls the store twice a second until approval (up to the login's
# lifetime). Streams waiting in one worker are bounded, per login request and in all: whoever started a login
# holds its id and could otherwise open thousands.
MAX_WAITING_STREAMS = 256
MAX_WAITING_STREAMS_PER_LOGIN = 2


class LoginService(login_connect.LoginService):
    def __init__(self, deps: Deps, lifetime: timedelta) -> None:
        self.d = deps
        self.lifetime = lifetime
        self._waiting: Counter[str] = Counter()
        self._waiting_total = 0

    async def start_login(self, request: pb.StartLoginRequest, ctx: Ctx) -> pb.StartLoginResponse:
        lifetime = self.lifetime
        agent = ctx.request_headers.get("user-agent", "")[:120]
        origin = f"{ctx.client_address or 'unknown address'} ({agent or 'no user agent'})"
        # "host:port": the port differs per connection.
        address = ctx.client_address.rpartition(":")[0] if ctx.client_address else None
        login = await self.d.store.run(lambda s: logins.start(s, lifetime, origin, address))
        # The URL carries the approval id only: whoever sees it can ask to approve, never take the token.
        return pb.StartLoginResponse(
            id=login.id, approve_url=f"{self.d.public_url}/login/{login.approval_id}"
        )

    async def finish_login(
        self, request: pb.FinishLoginRequest, ctx: Ctx
    ) -> AsyncIterator[pb.FinishLoginResponse]:
        """Waits (polling the store with reads: the approval may land on any worker) until the request is
        approved, then sends one token and ends; an unknown, used or expired request ends with an error."""
        login_id = request.id
        await self.d.store.read(lambda s: logins.pending(s, login_id))
        if (
            self._waiting_total >= MAX_WAITING_STREAMS
            or self._waiting[login_id] >= MAX_WAITING_STREAMS_PER_LOGIN
        ):
            raise ResourceExhausted("too many FinishLogin calls are waiting; run `depot login` again later")
        self._waiting[login_id] += 1
        self._waiting_total += 1
        try:
            while True:
                # A write (the token's) only once approved: waiting takes no write lock.
                if await self.d.store.read(lambda s: logins.approved(s, login_id)):
                    handover = await self.d.store.run(lambda s: logins.complete(s, login_id))
                    if handover is not None:
                        yield pb.FinishLoginResponse(token=handover.secret)
                        return
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self._waiting_total -= 1
            self._waiting[login_id] -= 1
            if self._waiting[login_id] <= 0:
                del self._waiting[login_id]
