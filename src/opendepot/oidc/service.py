"""What a verified CI identity reaches (the projects whose trust policies match it) and the replay rule."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from opendepot.clock import utcnow
from opendepot.errors import Unauthenticated
from opendepot.projects.models import TrustPolicy

from .models import TokenUse
from .providers import Identity, matches


def trusted_projects(session: Session, identity: Identity) -> frozenset[str]:
    policies = session.execute(
        select(TrustPolicy.project_id, TrustPolicy.claims).where(TrustPolicy.provider == identity.provider)
    ).all()
    return frozenset(project for project, claims in policies if matches(identity.provider, claims, identity))


def use_key(identity: Identity, token: str) -> str:
    """The issuer and jti; a token without a jti is known by its own digest."""
    jti = identity.claim("jti")
    basis = f"{identity.issuer}\n{jti}" if jti else token
    return hashlib.sha256(basis.encode()).hexdigest()


def record_use(session: Session, identity: Identity, token: str, window: timedelta) -> None:
    """A CI token may be used again for `window` after its first use (the CLI sends it on every call of one
    run, and bake runs several builds at once); after that it is a replay and refused."""
    now = utcnow()
    key = use_key(identity, token)
    exp = identity.claims.get("exp")
    expires_at = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else now + window
    seen = session.get(TokenUse, key)
    if seen is None:
        session.execute(delete(TokenUse).where(TokenUse.expires_at < now - timedelta(minutes=5)))
        # Another worker may record the same first use at the same moment: the insert then does nothing.
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        session.execute(
            insert(TokenUse)
            .values(key=key, first_used_at=now, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        seen = session.get(TokenUse, key, populate_existing=True)
        if seen is None:
            raise Unauthenticated("invalid CI token: could not record its use; try again")
    if now - seen.first_used_at > window:
        raise Unauthenticated(
            f"invalid CI token: already used {int((now - seen.first_used_at).total_seconds())} s ago "
            f"(a CI token is accepted for {int(window.total_seconds())} s after its first use)"
        )
