"""What a verified CI identity reaches (the projects whose trust policies match it) and the replay rule."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from opendepot.clock import utcnow
from opendepot.errors import Unauthenticated
from opendepot.projects import queries as project_queries

from . import queries
from .providers import Identity, matches


def trusted_projects(session: Session, identity: Identity) -> frozenset[str]:
    policies = project_queries.trust_policies_for(session, identity.provider)
    return frozenset(project for project, claims in policies if matches(identity.provider, claims, identity))


def use_key(identity: Identity, token: str) -> str:
    """The issuer and jti; a token without a jti is known by what its signature covers (header and
    claims). Not by the whole token: its signature has other spellings that verify too (base64 padding, an
    ECDSA signature's other s), each of which would be a replay of its own."""
    jti = identity.claim("jti")
    basis = f"{identity.issuer}\n{jti}" if jti else token.rpartition(".")[0]
    return hashlib.sha256(basis.encode()).hexdigest()


def record_use(session: Session, identity: Identity, token: str, window: timedelta) -> None:
    """A CI token may be used again for `window` after its first use (the CLI sends it on every call of one
    run, and bake runs several builds at once); after that it is a replay and refused."""
    now = utcnow()
    key = use_key(identity, token)
    exp = identity.claims.get("exp")
    expires_at = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else now + window
    seen = queries.get_use(session, key)
    if seen is None:
        queries.forget_uses_expired_before(session, now - timedelta(minutes=5))
        queries.record_first_use(session, key, now, expires_at)
        seen = queries.get_use(session, key, fresh=True)
        if seen is None:
            raise Unauthenticated("invalid CI token: could not record its use; try again")
    if now - seen.first_used_at > window:
        raise Unauthenticated(
            f"invalid CI token: already used {int((now - seen.first_used_at).total_seconds())} s ago "
            f"(a CI token is accepted for {int(window.total_seconds())} s after its first use)"
        )
