"""Bearer-token authentication for handlers: `await authn.principal(ctx)`."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext

from opendepot.auth import Principal
from opendepot.errors import Unauthenticated
from opendepot.store import Store
from opendepot.tokens import service as tokens

from .calls import current_call

MAX_TOKEN_LENGTH = 4096


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    token = token.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated("invalid token")
    return token


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def principal(self, ctx: RequestContext[Any, Any]) -> Principal:
        secret = bearer_token(ctx.request_headers.get("authorization"))
        principal = await self._store.read_lookup(lambda c: tokens.authenticate(c, secret))
        if principal is None:
            raise Unauthenticated("invalid token: unknown, revoked or deleted")
        if (call := current_call.get()) is not None:
            call.principal = principal
        return principal
