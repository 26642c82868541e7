"""Bearer-token authentication, run once per RPC by the guard (api/guard.py) from the Authorization header;
handlers read the result with `caller()` (api/calls.py).

A bearer is an opendepot token (looked up by its digest) or, when it is a JWT from a configured CI issuer,
an OIDC identity: verified, checked against replay, and given the projects whose trust policies match it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from opendepot.auth import Principal, TokenKind
from opendepot.errors import Unauthenticated
from opendepot.oidc import service as oidc
from opendepot.oidc.verifier import OidcVerifier, looks_like_jwt
from opendepot.store import Store
from opendepot.tokens import service as tokens

MAX_TOKEN_LENGTH = 8192


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
    def __init__(
        self,
        store: Store,
        verifier: OidcVerifier | None = None,
        replay_window: timedelta = timedelta(minutes=2),
    ) -> None:
        self._store = store
        self._verifier = verifier
        self._replay_window = replay_window

    async def from_header(self, authorization: str | None) -> Principal:
        return await self.from_secret(bearer_token(authorization))

    async def from_secret(self, secret: str) -> Principal:
        if len(secret) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("invalid token")
        if self._verifier is not None and looks_like_jwt(secret):
            return await self._from_ci_token(secret, self._verifier)
        principal = await self._store.read_row(tokens.principal_lookup(secret))
        if principal is None:
            raise Unauthenticated("invalid token: unknown, revoked, expired or deleted")
        return principal

    async def _from_ci_token(self, token: str, verifier: OidcVerifier) -> Principal:
        identity = await verifier.verify(token)
        window = self._replay_window

        def admit(session: Any) -> frozenset[str]:
            oidc.record_use(session, identity, token, window)
            return oidc.trusted_projects(session, identity)

        trusted = await self._store.run(admit)
        subject = identity.claim("sub") or identity.claim("jti")
        return Principal(
            kind=TokenKind.OIDC,
            token_id=f"{identity.provider}:{subject}"[:200],
            organization_id="",
            trusted_projects=trusted,
        )
