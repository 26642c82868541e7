"""depot.cli.v1beta1.LoginService (spec §5.7) and its approval page at `/login/<id>`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from connectrpc.request import RequestContext

from opendepot.errors import DomainError
from opendepot.gen.depot.cli.v1beta1 import login_connect
from opendepot.gen.depot.cli.v1beta1 import login_pb as pb
from opendepot.logins import service as logins

from .deps import Deps
from .http import Receive, Scope, Send, read_body
from .pages import login_page

Ctx = RequestContext[Any, Any]
POLL_SECONDS = 0.5


class LoginService(login_connect.LoginService):
    def __init__(self, deps: Deps, lifetime: timedelta) -> None:
        self.d = deps
        self.lifetime = lifetime

    async def start_login(self, request: pb.StartLoginRequest, ctx: Ctx) -> pb.StartLoginResponse:
        lifetime = self.lifetime
        login = await self.d.store.run(lambda s: logins.start(s, lifetime))
        return pb.StartLoginResponse(id=login.id, approve_url=f"{self.d.public_url}/login/{login.id}")

    async def finish_login(
        self, request: pb.FinishLoginRequest, ctx: Ctx
    ) -> AsyncIterator[pb.FinishLoginResponse]:
        """Waits (polling the store: the approval may land on any worker) until the request is approved,
        then sends one token and ends; an unknown, used or expired request ends with an error."""
        login_id = request.id
        await self.d.store.read(lambda s: logins.pending(s, login_id))
        while True:
            handover = await self.d.store.run(lambda s: logins.complete(s, login_id))
            if handover is not None:
                yield pb.FinishLoginResponse(token=handover.secret)
                return
            await asyncio.sleep(POLL_SECONDS)


class LoginPage:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        login_id = scope["path"].removeprefix("/login/")
        status, page = 200, ""
        try:
            if scope["method"] == "POST":
                body = await read_body(receive) or b""
                token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
                principal = await self.d.authn.from_secret(token) if token else None
                if principal is None:
                    status, page = 400, login_page(login_id, "Paste an organization token.")
                else:
                    await self.d.store.run(lambda s: logins.approve_with_token(s, login_id, principal))
                    page = login_page(
                        login_id, "You can close this page; depot login will finish.", done=True
                    )
            else:
                await self.d.store.read(lambda s: logins.pending(s, login_id))
                page = login_page(login_id)
        except DomainError as exc:
            status, page = 403 if scope["method"] == "POST" else 404, login_page(login_id, exc.message)
        body = page.encode()
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", b"default-src 'none'; form-action 'self'"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
