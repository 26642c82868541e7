"""Verifies CI-issued JWTs: the issuer is a configured provider's; the signature checks against the keys
the issuer publishes (OpenID discovery → `jwks_uri`, cached, refetched on an unknown `kid` at most once per
cool-down); `exp`/`nbf`/`iat` hold within a small leeway; `aud` is one we accept. Asymmetric algorithms
only: `none` and HMAC (whose "key" would be public) are refused before anything else."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from opendepot.errors import Unauthenticated

from .providers import Identity, provider_of

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LEEWAY_SECONDS = 60
KEYS_TTL_SECONDS = 3600.0
REFRESH_COOLDOWN_SECONDS = 30.0
# A provider with an issuer per organization (CircleCI: .../org/<id>) lets a caller name any issuer under the
# configured prefix, so what unknown issuers can make this server do is bounded: at most MAX_ISSUERS key sets
# kept (least recently used evicted), a failed fetch remembered for FAILED_FETCH_SECONDS, and at most
# FETCHES_PER_MINUTE fetches in all.
MAX_ISSUERS = 64
FAILED_FETCH_SECONDS = 300.0
FETCHES_PER_MINUTE = 20


def looks_like_jwt(secret: str) -> bool:
    return secret.startswith("eyJ") and secret.count(".") == 2


@dataclass
class _Keys:
    fetched_at: float = 0.0
    failed_at: float | None = None
    by_kid: dict[str, Any] = field(default_factory=dict)
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
        self._fetches: deque[float] = deque()

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
        key = await self._key(issuer, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
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
                self._keys.popitem(last=False)
        self._keys.move_to_end(issuer)
        return keys

    def _may_fetch(self, issuer: str, keys: _Keys) -> None:
        now = time.monotonic()
        if keys.failed_at is not None and not keys.by_kid and now - keys.failed_at < FAILED_FETCH_SECONDS:
            raise Unauthenticated(f"cannot fetch the signing keys of {issuer} (failed recently)")
        while self._fetches and now - self._fetches[0] > 60:
            self._fetches.popleft()
        if len(self._fetches) >= FETCHES_PER_MINUTE:
            raise Unauthenticated("too many OIDC key fetches just now; try again in a minute")
        self._fetches.append(now)

    async def _key(self, issuer: str, kid: str | None) -> Any:
        keys = self._keys_of(issuer)
        async with keys.lock:
            stale = time.monotonic() - keys.fetched_at > KEYS_TTL_SECONDS
            unknown = kid not in keys.by_kid if kid else len(keys.by_kid) != 1
            if stale or (unknown and time.monotonic() - keys.fetched_at > self._cooldown):
                self._may_fetch(issuer, keys)
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
            jwk_set = jwt.PyJWKSet.from_dict(published.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
            if keys.by_kid:  # keep serving the keys we have; try again after the cool-down
                keys.fetched_at = time.monotonic()
                return
            keys.failed_at = time.monotonic()
            raise Unauthenticated(f"cannot fetch the signing keys of {issuer}: {exc}") from exc
        keys.by_kid = {k.key_id or "": k.key for k in jwk_set.keys}
        keys.fetched_at, keys.failed_at = time.monotonic(), None
