"""What made-up CircleCI issuers can make the verifier fetch (issue 14): a bounded, evicting key cache, a
failed fetch remembered, and a global limit on fetches. The HTTP client is a stand-in at the transport seam
(no request leaves the process)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from opendepot.errors import Unauthenticated
from opendepot.oidc import verifier as verifier_module
from opendepot.oidc.verifier import OidcVerifier

BASE = "https://oidc.circleci.example/org"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token_from(issuer: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": "aud", "sub": "s", "iat": now, "exp": now + 300}
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k"})


def test_unknown_issuers_are_bounded() -> None:
    requested: list[str] = []

    def nothing_there(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        return httpx.Response(404)

    http = httpx.AsyncClient(transport=httpx.MockTransport(nothing_there))
    verifier = OidcVerifier({"circleci": BASE}, ["aud"], http=http)

    async def attempt(issuer: str) -> str:
        try:
            await verifier.verify(token_from(issuer))
        except Unauthenticated as exc:
            return exc.message
        return "verified"

    async def run() -> list[str]:
        issuers = [f"{BASE}/{uuid.uuid4()}" for _ in range(200)]
        messages = [await attempt(i) for i in issuers]
        # The same failing issuer again: remembered, not fetched again.
        before = len(requested)
        messages.append(await attempt(issuers[0]))
        assert len(requested) == before
        return messages

    messages = asyncio.run(run())
    assert "verified" not in messages
    # One discovery request per fetch; at most FETCHES_PER_MINUTE fetches however many issuers were named.
    assert len(requested) <= verifier_module.FETCHES_PER_MINUTE
    assert sum("too many OIDC key fetches" in m for m in messages) >= 200 - verifier_module.FETCHES_PER_MINUTE
    assert len(verifier._keys) <= verifier_module.MAX_ISSUERS
    assert "failed recently" in messages[-1] or "too many" in messages[-1]


@pytest.mark.parametrize("issuer", ["https://elsewhere.example", f"{BASE}/a/b"])
def test_unconfigured_issuers_are_never_fetched(issuer: str) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"fetched {request.url}")

    verifier = OidcVerifier(
        {"circleci": BASE}, ["aud"], http=httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    )
    with pytest.raises(Unauthenticated):
        asyncio.run(verifier.verify(token_from(issuer)))
