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
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

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


def _jwks_host(keys: dict[str, dict[str, object]], requested: list[str]) -> httpx.AsyncClient:
    """Every issuer under any host publishes the same JWK set; each request is noted."""

    def serve(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        if request.url.path.endswith("/.well-known/openid-configuration"):
            issuer = str(request.url).removesuffix("/.well-known/openid-configuration")
            return httpx.Response(200, json={"jwks_uri": f"{issuer}/jwks"})
        return httpx.Response(200, json={"keys": list(keys.values())})

    return httpx.AsyncClient(transport=httpx.MockTransport(serve))


def _rsa_jwk(kid: str) -> dict[str, object]:
    jwk: dict[str, object] = dict(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True))
    return {**jwk, "kid": kid, "use": "sig"}


GITHUB = "https://token.actions.example"


def test_one_issuer_however_spelt_is_one_key_set() -> None:
    """Trailing slashes are the same issuer to provider_of: they must not be a fetch (and a cache entry)
    each, or anyone could spend the fetch budget and evict the real issuer's keys."""
    requested: list[str] = []
    verifier = OidcVerifier({"github": GITHUB}, ["aud"], http=_jwks_host({"k": _rsa_jwk("k")}, requested))

    async def run() -> None:
        await verifier.verify(token_from(GITHUB))
        for slashes in range(1, 71):
            with pytest.raises(Unauthenticated, match="no key 'other'"):
                await verifier.verify(
                    jwt.encode(
                        {"iss": GITHUB + "/" * slashes, "aud": "aud", "iat": int(time.time()), "exp": 2**31},
                        KEY,
                        algorithm="RS256",
                        headers={"kid": "other"},
                    )
                )
        await verifier.verify(token_from(GITHUB))

    asyncio.run(run())
    assert len(requested) == 2  # one discovery and one JWK set, for all 72 tokens
    assert list(verifier._keys) == [GITHUB]


def test_made_up_organizations_cannot_keep_real_issuers_out() -> None:
    """A flood of made-up CircleCI organizations spends CircleCI's first-fetch budget only: GitHub's first
    fetch still happens, and an organization whose keys are held keeps them (not evicted) and refreshes
    them when they go stale, outside the budget."""
    requested: list[str] = []
    http = _jwks_host({"k": _rsa_jwk("k")}, requested)
    verifier = OidcVerifier({"circleci": BASE, "github": GITHUB}, ["aud"], http=http)
    real_org = f"{BASE}/{uuid.uuid4()}"

    async def refused(issuer: str) -> bool:
        try:
            await verifier.verify(
                jwt.encode(
                    {"iss": issuer, "aud": "aud", "iat": int(time.time()), "exp": 2**31},
                    KEY,
                    algorithm="RS256",
                    headers={"kid": "unknown"},
                )
            )
        except Unauthenticated:
            return True
        return False

    async def run() -> None:
        await verifier.verify(token_from(real_org))
        assert all([await refused(f"{BASE}/{uuid.uuid4()}") for _ in range(200)])
        with pytest.raises(Unauthenticated, match="too many OIDC key fetches"):
            await verifier.verify(token_from(f"{BASE}/{uuid.uuid4()}"))
        await verifier.verify(token_from(GITHUB))  # another provider's budget
        assert real_org in verifier._keys
        verifier._keys[real_org].fetched_at -= verifier_module.KEYS_TTL_SECONDS + 1  # stale
        before = len(requested)
        await verifier.verify(token_from(real_org))
        assert len(requested) == before + 2  # refreshed, though CircleCI's budget is spent

    asyncio.run(run())
    assert len(verifier._keys) <= verifier_module.MAX_ISSUERS


@pytest.mark.parametrize(
    ("algorithm", "signer"),
    [
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("ES384", ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ],
)
def test_an_algorithm_the_key_is_not_for_is_refused(algorithm: str, signer: object) -> None:
    """The header's alg names the issuer's RSA key's kid but another algorithm: PyJWT would raise TypeError
    (a 500 for an anonymous caller); the verifier refuses the token first."""
    verifier = OidcVerifier({"github": GITHUB}, ["aud"], http=_jwks_host({"k": _rsa_jwk("k")}, []))
    forged = jwt.encode(
        {"iss": GITHUB, "aud": "aud", "iat": int(time.time()), "exp": 2**31},
        signer,  # type: ignore[arg-type]
        algorithm=algorithm,
        headers={"kid": "k"},
    )
    with pytest.raises(Unauthenticated, match=f"not for algorithm {algorithm}"):
        asyncio.run(verifier.verify(forged))


def test_a_jwk_that_names_its_algorithm_takes_only_that() -> None:
    """An RSA key published for RS256 does not check a PS256 signature, though the key type would fit."""
    verifier = OidcVerifier(
        {"github": GITHUB}, ["aud"], http=_jwks_host({"k": {**_rsa_jwk("k"), "alg": "RS256"}}, [])
    )
    claims = {"iss": GITHUB, "aud": "aud", "iat": int(time.time()), "exp": 2**31}

    async def run() -> None:
        await verifier.verify(jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k"}))
        with pytest.raises(Unauthenticated, match="not for algorithm PS256"):
            await verifier.verify(jwt.encode(claims, KEY, algorithm="PS256", headers={"kid": "k"}))

    asyncio.run(run())
