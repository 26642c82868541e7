"""Creating, listing and revoking tokens, and resolving a bearer secret to a Principal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.clock import as_utc, utcnow
from opendepot.errors import InvalidArgument, NotFound, ResourceExhausted
from opendepot.ids import new_id
from opendepot.projects.service import load_managed_project
from opendepot.store import RowLookup
from opendepot.validation import require_id, require_text

from . import queries
from .models import Token
from .secrets import digests_match, hash_secret, new_secret

MAX_DESCRIPTION_LENGTH = 255
MAX_TOKENS_PER_PROJECT = 1000
BUILD_TOKEN_GRACE = timedelta(minutes=5)


def _issue(
    session: Session,
    kind: TokenKind,
    organization_id: str,
    project_id: str | None,
    description: str,
    build_id: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[Token, str]:
    secret = new_secret(kind)
    token = Token(
        id=new_id(),
        kind=kind.value,
        organization_id=organization_id,
        project_id=project_id,
        build_id=build_id,
        description=description,
        secret_hash=hash_secret(secret),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    queries.insert(session, token)
    return token, secret


def create_organization_token(
    session: Session, organization_id: str, description: str, expires_at: datetime | None = None
) -> tuple[Token, str]:
    """Admin path (bootstrap and `opendepot tokens create`): the secret is returned once, never stored."""
    description = require_text("description", description, MAX_DESCRIPTION_LENGTH)
    if expires_at is not None and as_utc(expires_at) <= utcnow():
        raise InvalidArgument("expires_at", "must be in the future")
    return _issue(session, TokenKind.ORGANIZATION, organization_id, None, description, expires_at=expires_at)


def list_organization_tokens(session: Session, organization_id: str) -> Sequence[Token]:
    """Admin path: an organization's organization and user tokens (never their secrets)."""
    return queries.for_organization(session, organization_id, (TokenKind.ORGANIZATION, TokenKind.USER))


def revoke_organization_token(session: Session, organization_id: str, token_id: str) -> Token:
    """Admin path: revokes any token of the organization; the next request with it is unauthenticated."""
    token = queries.get(session, require_id("token_id", token_id))
    if token is None or token.organization_id != organization_id:
        raise NotFound(f"token {token_id!r} not found in organization {organization_id}")
    queries.delete_token(session, token.id)
    return token


def create_user_token(session: Session, organization_id: str, description: str) -> tuple[Token, str]:
    """From `depot login`, once approved: acts for the organization like an organization token."""
    return _issue(session, TokenKind.USER, organization_id, None, description[:MAX_DESCRIPTION_LENGTH])


def create_build_token(session: Session, organization_id: str, project_id: str, build_id: str) -> str:
    """Issued with each build; reaches that build only. Returned once, like every secret."""
    _token, secret = _issue(
        session, TokenKind.BUILD, organization_id, project_id, f"build {build_id}", build_id=build_id
    )
    return secret


def expire_build_tokens(session: Session, build_ids: Sequence[str], finished_at: datetime) -> None:
    """A build's token ends with the build, after a grace for the CLI's last calls (FinishBuild, GetPullInfo):
    a token that leaks from a CI log afterwards reaches nothing. So do the pull tokens it asked for."""
    queries.expire_build_tokens(session, build_ids, finished_at + BUILD_TOKEN_GRACE)


def create_pull_token(
    session: Session, caller: Principal, organization_id: str, project_id: str, lifetime: timedelta
) -> tuple[str, datetime]:
    """Pull-only and short-lived (GetPullToken, GetPullInfo). Expired ones are swept as new ones are made.

    One a build token asks for belongs to that build: it expires with the build token (FinishBuild and the
    reaper expire both), and one made after the build ended lives no longer than the build token. Else a
    build token leaked from a CI log could be turned into an hour of pulls from the project's registry."""
    now = utcnow()
    queries.delete_expired(session, now)
    expires_at = now + lifetime
    build_id = None
    if caller.kind is TokenKind.BUILD:
        build_id = caller.build_id
        build_token = queries.get(session, caller.token_id)
        if build_token is not None and build_token.expires_at is not None:
            expires_at = min(expires_at, build_token.expires_at)
    _token, secret = _issue(
        session,
        TokenKind.PULL,
        organization_id,
        project_id,
        "registry pull",
        build_id=build_id,
        expires_at=expires_at,
    )
    return secret, expires_at


def create_project_token(
    session: Session, principal: Principal, project_id: str, description: str
) -> tuple[Token, str]:
    project = load_managed_project(session, principal, project_id, "manage tokens")
    description = require_text("description", description, MAX_DESCRIPTION_LENGTH)
    if queries.count_for_project(session, project.id) >= MAX_TOKENS_PER_PROJECT:
        raise ResourceExhausted(f"a project can have at most {MAX_TOKENS_PER_PROJECT} tokens")
    return _issue(session, TokenKind.PROJECT, project.organization_id, project.id, description)


def list_project_tokens(session: Session, principal: Principal, project_id: str) -> Sequence[Token]:
    project = load_managed_project(session, principal, project_id, "manage tokens")
    return queries.for_project(session, project.id, TokenKind.PROJECT.value)


def _load_project_token(session: Session, principal: Principal, token_id: str) -> Token:
    token = queries.get(session, require_id("token_id", token_id))
    # Only project tokens are managed through the API; organization tokens are admin business.
    if token is None or token.kind != TokenKind.PROJECT.value or token.project_id is None:
        raise NotFound(f"token {token_id!r} not found")
    load_managed_project(session, principal, token.project_id, "manage tokens")
    return token


def _revocable_user_token(session: Session, principal: Principal, token_id: str) -> Token | None:
    """An opendepot extension of DeleteToken: an organization token revokes its organization's user tokens
    (from `depot login`), and a user token revokes itself."""
    token = queries.get(session, require_id("token_id", token_id))
    if token is None or token.kind != TokenKind.USER.value:
        return None
    if principal.kind is TokenKind.USER and principal.token_id == token.id:
        return token
    if principal.kind is TokenKind.ORGANIZATION and principal.organization_id == token.organization_id:
        return token
    return None


def update_token(session: Session, principal: Principal, token_id: str, description: str) -> Token:
    token = _load_project_token(session, principal, token_id)
    token.description = require_text("description", description, MAX_DESCRIPTION_LENGTH)
    session.flush()
    return token


def delete_token(session: Session, principal: Principal, token_id: str) -> None:
    user_token = _revocable_user_token(session, principal, token_id)
    token = user_token or _load_project_token(session, principal, token_id)
    queries.delete_token(session, token.id)


def authenticate(connection: Connection | Session, secret: str) -> Principal | None:
    digest = hash_secret(secret)
    return _principal(queries.principal_row(connection, digest), digest)


def principal_lookup(secret: str) -> RowLookup[Principal | None]:
    """The read that authenticates a bearer secret on every RPC (run by `Store.read_row`): the token row of
    its digest, then the same checks as `authenticate`. None: unknown, revoked, expired or deleted."""
    digest = hash_secret(secret)
    return RowLookup(queries.PRINCIPAL, {"secret_hash": digest}, lambda row: _principal(row, digest))


def _principal(row: Sequence[Any] | None, digest: str) -> Principal | None:
    if row is None:
        return None
    # A Row unpacks as the tuple it is; Row.tuple() is deprecated and warns (~0.1 ms) on every call.
    token_id, kind, organization_id, project_id, build_id, stored_hash, expires_at = row
    if not digests_match(stored_hash, digest):
        return None
    if expires_at is not None and as_utc(expires_at) <= utcnow():
        return None
    return Principal(
        kind=TokenKind(kind),
        token_id=token_id,
        organization_id=organization_id,
        project_id=project_id,
        build_id=build_id,
    )
