"""`depot login`'s device flow (spec §5.7): StartLogin makes a request with a secret id; an organization
admin approves it (on the approval page with an organization token, or `opendepot login approve ID`);
FinishLogin then makes a user token for that organization and hands it over once."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.clock import utcnow
from opendepot.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from opendepot.organizations import queries as organization_queries
from opendepot.tokens import service as tokens

from . import queries
from .models import LoginRequest

MAX_ID_LENGTH = 64
# Letters and digits only: an id is pasted into shells (`opendepot login approve ID`), where a leading "-"
# would read as an option. 32 of 62 symbols is about 190 bits.
_ID_ALPHABET = string.ascii_letters + string.digits


def new_login_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(32))


def start(session: Session, lifetime: timedelta) -> LoginRequest:
    now = utcnow()
    queries.forget_expired_before(session, now - timedelta(days=1))
    login = LoginRequest(id=new_login_id(), created_at=now, expires_at=now + lifetime)
    session.add(login)
    session.flush()
    return login


def _load(session: Session, login_id: str) -> LoginRequest:
    if not login_id or len(login_id) > MAX_ID_LENGTH:
        raise InvalidArgument("id", "is not a login request id")
    login = queries.get(session, login_id)
    if login is None:
        raise NotFound("unknown login request; run `depot login` again")
    return login


def _check_open(login: LoginRequest) -> None:
    if login.completed_at is not None:
        raise FailedPrecondition("this login request was already used; run `depot login` again")
    if login.expires_at <= utcnow():
        raise FailedPrecondition("this login request expired; run `depot login` again")


def pending(session: Session, login_id: str) -> LoginRequest:
    login = _load(session, login_id)
    _check_open(login)
    return login


def approve(session: Session, login_id: str, organization_id: str, approved_by: str) -> LoginRequest:
    login = pending(session, login_id)
    if organization_queries.get(session, organization_id) is None:
        raise NotFound(f"organization {organization_id!r} not found")
    if login.approved_at is None:
        login.approved_organization_id, login.approved_at = organization_id, utcnow()
        login.approved_by = approved_by[:32]
    session.flush()
    return login


def approve_with_token(session: Session, login_id: str, principal: Principal) -> LoginRequest:
    if principal.kind not in (TokenKind.ORGANIZATION, TokenKind.USER):
        raise PermissionDenied("approving a login takes an organization token")
    return approve(session, login_id, principal.organization_id, principal.token_id)


@dataclass(frozen=True, slots=True)
class Handover:
    organization_id: str
    secret: str


def complete(session: Session, login_id: str) -> Handover | None:
    """None while the request waits for approval; once approved, a new user token, handed over once."""
    login = pending(session, login_id)
    if login.approved_at is None or login.approved_organization_id is None:
        return None
    login.completed_at = utcnow()
    _token, secret = tokens.create_user_token(
        session, login.approved_organization_id, f"depot login {login.id[:8]}"
    )
    return Handover(login.approved_organization_id, secret)
