"""Signing in to the dashboard: a token becomes a server-side session behind an HttpOnly cookie.

Organization and user tokens may sign in. Project tokens may not: the dashboard is where an organization
manages its projects, tokens and usage, and a project token may do none of that; it stays a tool for CI and
the CLI. CI (OIDC), build and pull tokens are refused for the same reason."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.clock import as_utc, utcnow
from opendepot.errors import PermissionDenied
from opendepot.tokens.secrets import digests_match, hash_secret

from . import queries
from .models import DashboardSession

SESSION_LIFETIME = timedelta(hours=12)
SIGN_IN_KINDS = (TokenKind.ORGANIZATION, TokenKind.USER)


@dataclass(frozen=True, slots=True)
class SignedIn:
    principal: Principal
    csrf_token: str


@dataclass(frozen=True, slots=True)
class Opened:
    cookie_secret: str
    csrf_token: str


def open_session(session: Session, principal: Principal) -> Opened:
    if principal.kind not in SIGN_IN_KINDS:
        raise PermissionDenied(
            f"a {principal.kind} token cannot sign in to the dashboard; use an organization or user token"
        )
    now = utcnow()
    queries.remove_expired(session, now)
    expires_at = now + SESSION_LIFETIME
    # A session acts with its token, so it ends no later than the token does.
    token_expires_at = queries.token_expiry(session, principal.token_id)
    if token_expires_at is not None:
        expires_at = min(expires_at, as_utc(token_expires_at))
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    queries.add(
        session,
        DashboardSession(
            secret_hash=hash_secret(secret),
            token_id=principal.token_id,
            csrf_token=csrf,
            created_at=now,
            expires_at=expires_at,
        ),
    )
    return Opened(secret, csrf)


def signed_in(session: Session, cookie_secret: str) -> SignedIn | None:
    """Who the cookie belongs to; None for an unknown, expired or signed-out session, or a deleted or
    expired token."""
    if not cookie_secret or len(cookie_secret) > 100:
        return None
    row = queries.with_token(session, hash_secret(cookie_secret))
    if row is None:
        return None
    found, token = row
    now = utcnow()
    if as_utc(found.expires_at) <= now or TokenKind(token.kind) not in SIGN_IN_KINDS:
        return None
    # The token's own expiry too: a session opened before sign-in capped its lifetime can outlive it.
    if token.expires_at is not None and as_utc(token.expires_at) <= now:
        return None
    principal = Principal(
        kind=TokenKind(token.kind), token_id=token.id, organization_id=token.organization_id
    )
    return SignedIn(principal, found.csrf_token)


def csrf_matches(signed: SignedIn, sent: str) -> bool:
    return bool(sent) and digests_match(signed.csrf_token, sent)


def close_session(session: Session, cookie_secret: str) -> None:
    queries.remove(session, hash_secret(cookie_secret))


def new_pre_sign_in() -> str:
    """The sign-in form's own CSRF value (a cookie and a hidden field that must match)."""
    return secrets.token_urlsafe(24)
