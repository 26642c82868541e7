"""`depot login`'s device flow (spec §5.7): StartLogin makes a request with a secret id (which only the CLI
holds: FinishLogin redeems it) and a separate approval id (the URL the CLI prints). An organization admin
approves on the page, which shows a user code, where the request came from and when, and takes an explicit
confirmation of those with an organization token; or runs `opendepot login approve APPROVAL_ID`.
FinishLogin then makes a user token for that organization and hands it over once. Who approved is recorded."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.clock import utcnow
from opendepot.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from opendepot.organizations import queries as organization_queries
from opendepot.tokens import service as tokens

from . import queries
from .models import LoginRequest

MAX_ID_LENGTH = 64
# Letters and digits only: an id is pasted into shells (`opendepot login approve ID`), where a leading "-"
# would read as an option. 32 of 62 symbols is about 190 bits.
_ID_ALPHABET = string.ascii_letters + string.digits


# Unambiguous capitals for the user code: no 0/O, 1/I.
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
MAX_ORIGIN_LENGTH = 255
# StartLogin is public: each call writes a row. Waiting requests are bounded, per client address and in all,
# and an expired one nobody approved is deleted at once (an approved one is kept a day: it says who approved),
# so an anonymous flood cannot grow the table without end. Legitimate logins wait minutes at most, a few at a
# time; behind a proxy every client shares its address.
MAX_WAITING_LOGINS = 1000
MAX_WAITING_LOGINS_PER_ADDRESS = 50


def new_login_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(32))


def new_user_code() -> str:
    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"


def start(
    session: Session, lifetime: timedelta, origin: str = "", client_address: str | None = None
) -> LoginRequest:
    now = utcnow()
    queries.forget_expired(session, now, approved_before=now - timedelta(days=1))
    address = (client_address or "unknown")[:64]
    if queries.waiting(session, now, address) >= MAX_WAITING_LOGINS_PER_ADDRESS:
        raise ResourceExhausted(
            f"{MAX_WAITING_LOGINS_PER_ADDRESS} logins from this address are waiting for approval already;"
            " approve or let them expire first"
        )
    if queries.waiting(session, now) >= MAX_WAITING_LOGINS:
        raise ResourceExhausted("too many logins are waiting for approval; try again in a few minutes")
    login = LoginRequest(
        id=new_login_id(),
        approval_id=new_login_id(),
        user_code=new_user_code(),
        origin=origin[:MAX_ORIGIN_LENGTH],
        client_address=address,
        created_at=now,
        expires_at=now + lifetime,
    )
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


def awaiting_approval(session: Session, approval_id: str) -> LoginRequest:
    """The request behind an approval URL (its secret id is never looked up this way)."""
    if not approval_id or len(approval_id) > MAX_ID_LENGTH:
        raise InvalidArgument("id", "is not a login approval id")
    login = queries.by_approval_id(session, approval_id)
    if login is None:
        raise NotFound("unknown login request; run `depot login` again")
    _check_open(login)
    return login


def approve(session: Session, approval_id: str, organization_id: str, approved_by: str) -> LoginRequest:
    login = awaiting_approval(session, approval_id)
    if organization_queries.get(session, organization_id) is None:
        raise NotFound(f"organization {organization_id!r} not found")
    if login.approved_at is None:
        login.approved_organization_id, login.approved_at = organization_id, utcnow()
        login.approved_by = approved_by[:32]
    session.flush()
    return login


def approve_with_token(
    session: Session, approval_id: str, principal: Principal, confirmed_code: str
) -> LoginRequest:
    """The page's approval: the approver confirmed the request's code (with its origin and time)."""
    if principal.kind not in (TokenKind.ORGANIZATION, TokenKind.USER):
        raise PermissionDenied("approving a login takes an organization token")
    login = awaiting_approval(session, approval_id)
    if not confirmed_code or confirmed_code.strip().upper() != (login.user_code or ""):
        raise InvalidArgument("confirm", "confirm the code, origin and time of the login you started")
    return approve(session, approval_id, principal.organization_id, principal.token_id)


@dataclass(frozen=True, slots=True)
class Handover:
    organization_id: str
    secret: str


def approved(session: Session, login_id: str) -> bool:
    """Whether the request is approved and waits to be handed over: a read, for FinishLogin's polling."""
    login = pending(session, login_id)
    return login.approved_at is not None and login.approved_organization_id is not None


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
