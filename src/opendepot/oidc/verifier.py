"""Verifies CI-issued JWTs: the issuer is a configured provider's; the signature checks against the keys
the issuer publishes (OpenID discovery → `jwks_uri`, cached, refetched on an unknown `kid` at most once per
cool-down); `exp`/`nbf`/`iat` hold within a small leeway; `aud` is one we accept. Asymmetric algorithms
only: `none` and HMAC (whose "key" would be public) are refused before anything else."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from opendepot.errors import Unauthenticated

from .providers import Identity, provider_of

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_SECONDS = 60
KEYS_TTL_SECONDS = 3600.0
REFRESH_COOLDOWN_SECONDS = 30.0
# A provider with an issuer per organization (CircleCI: .../org/<id>) lets a caller name any issuer under the
# configured prefix, so what unknown issuers can make this server do is bounded: at most MAX_ISSUERS key sets
# kept (least recently used evicted, those that never fetched keys first), a failed fetch remembered for
# FAILED_FETCH_SECONDS, and at most FETCHES_PER_MINUTE first fetches per provider. An issuer whose keys are
# held refreshes on its own clock (once an hour, or once per cool-down on an unknown kid) outside that
# budget: made-up issuers cannot keep a real one's tokens out, however many they name.
MAX_ISSUERS = 64
FAILED_FETCH_SECONDS = 300.0
FETCHES_PER_MINUTE = 20


def looks_like_jwt(secret: str) -> bool:
    return secret.startswith("eyJ") and secret.count(".") == 2


@dataclass(frozen=True)
class _Key:
    key: Any
    algorithm: str | None  # the JWK's own `alg`, if it names one

    def fits(self, algorithm: str) -> bool:
        """Whether a token signed with `algorithm` may be checked with this key. The algorithm is the
        caller's (the token's header), and PyJWT raises TypeError, not one of its errors, for an RSA key
        given ES256 and the like."""
        if self.algorithm is not None and self.algorithm != algorithm:
            return False
        if algorithm.startswith(("RS", "PS")):
            return isinstance(self.key, rsa.RSAPublicKey)
        if algorithm == "EdDSA":
            return isinstance(self.key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        curve = _CURVES.get(algorithm)
        elliptic = isinstance(self.key, ec.EllipticCurvePublicKey)
        return curve is not None and elliptic and self.key.curve.name == curve


_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


@dataclass
class _Keys:
    fetched_at: float = 0.0
    failed_at: float | None = None
    by_kid: dict[str, _Key] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OidcVerifier:
    def __init__(
        self,
        issuers: Mapping[str, str],
        audiences: Sequence[str],
        *,
        http: httpx.AsyncClient | None = None,
        refresh_cooldown: float = REFRESH_COOLDOWN_SECONDS,
    ) -> None:
        self.issuers = dict(issuers)
        self.audiences = list(audiences)
        self._http = http or httpx.AsyncClient(timeout=10, follow_redirects=False)
        self._cooldown = refresh_cooldown
        self._keys: OrderedDict[str, _Keys] = OrderedDict()
        self._fetches: dict[str, deque[float]] = defaultdict(deque)  # first fetches, per provider

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token: not a well-formed JWT") from exc
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(f"invalid CI token: algorithm {algorithm!r} is not accepted")
        issuer = unverified.get("iss")
        provider = provider_of(issuer, self.issuers) if isinstance(issuer, str) else None
        if provider is None or not isinstance(issuer, str):
            raise Unauthenticated(f"invalid CI token: issuer {issuer!r} is not a configured OIDC issuer")
        # One key set per issuer however the token spells it: `https://x/` and `https://x//` are one issuer
        # (provider_of accepts both), not one fetch each.
        key = await self._key(provider, issuer.rstrip("/"), header.get("kid"))
        if not key.fits(algorithm):
            raise Unauthenticated(f"invalid CI token: its key is not for algorithm {algorithm}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audiences,
                issuer=issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("invalid CI token: expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated(
                f"invalid CI token: audience must be one of {', '.join(self.audiences)}"
            ) from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("invalid CI token: not valid yet") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("invalid CI token: bad signature") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid CI token: {exc}") from exc
        return Identity(provider, issuer, claims)

    def _keys_of(self, issuer: str) -> _Keys:
        keys = self._keys.get(issuer)
        if keys is None:
            keys = self._keys[issuer] = _Keys()
            while len(self._keys) > MAX_ISSUERS:
                keyless = next((name for name, held in self._keys.items() if not held.by_kid), None)
                if keyless is not None:
                    del self._keys[keyless]
                else:
                    self._keys.popitem(last=False)
        self._keys.move_to_end(issuer)
        return keys

    def _may_fetch_first(self, provider: str, issuer: str, keys: _Keys) -> None:
        now = time.monotonic()
        if keys.failed_at is not None and now - keys.failed_at < FAILED_FETCH_SECONDS:
            raise Unauthenticated(f"cannot fetch the signing keys of {issuer} (failed recently)")
        fetches = self._fetches[provider]
        while fetches and now - fetches[0] > 60:
            fetches.popleft()
        if len(fetches) >= FETCHES_PER_MINUTE:
            raise Unauthenticated("too many OIDC key fetches just now; try again in a minute")
        fetches.append(now)

    async def _key(self, provider: str, issuer: str, kid: str | None) -> _Key:
        keys = self._keys_of(issuer)
        async with keys.lock:
            stale = time.monotonic() - keys.fetched_at > KEYS_TTL_SECONDS
            unknown = kid not in keys.by_kid if kid else len(keys.by_kid) != 1
            if stale or (unknown and time.monotonic() - keys.fetched_at > self._cooldown):
                if not keys.by_kid:
                    self._may_fetch_first(provider, issuer, keys)
                await self._fetch(issuer, keys)
            if kid is None:
                if len(keys.by_kid) == 1:
                    return next(iter(keys.by_kid.values()))
                raise Unauthenticated("invalid CI token: no kid, and the issuer publishes several keys")
            key = keys.by_kid.get(kid)
            if key is None:
                raise Unauthenticated(f"invalid CI token: the issuer publishes no key {kid!r}")
            return key

    async def _fetch(self, issuer: str, keys: _Keys) -> None:
        try:
            discovery = await self._http.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
            discovery.raise_for_status()
            jwks_uri = discovery.json()["jwks_uri"]
            published = await self._http.get(jwks_uri)
            published.raise_for_status()
            by_kid = _usable_keys(published.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
            if keys.by_kid:  # keep serving the keys we have; try again after the cool-down
                keys.fetched_at = time.monotonic()
                return
            keys.failed_at = time.monotonic()
            raise Unauthenticated(f"cannot fetch the signing keys of {issuer}: {exc}") from exc
        keys.by_kid = by_kid
        keys.fetched_at, keys.failed_at = time.monotonic(), None


def _usable_keys(published: Any) -> dict[str, _Key]:
    """The JWK set's keys by kid, skipping those PyJWT cannot use (as PyJWKSet does)."""
    members = published.get("keys") if isinstance(published, dict) else None
    if not isinstance(members, list):
        raise ValueError("not a JWK set")
    usable: dict[str, _Key] = {}
    for member in members:
        if not isinstance(member, dict):
            continue
        try:
            jwk = jwt.PyJWK(member)
        except jwt.PyJWTError:
            continue
        declared = member.get("alg")
        usable[jwk.key_id or ""] = _Key(jwk.key, declared if isinstance(declared, str) else None)
    if not usable:
        raise ValueError("the JWK set has no usable key")
    return usable
