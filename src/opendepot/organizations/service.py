from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from opendepot.auth import Principal
from opendepot.clock import utcnow
from opendepot.errors import AlreadyExists, NotFound
from opendepot.ids import new_id
from opendepot.validation import require_text

from . import queries
from .models import Organization

MAX_NAME_LENGTH = 100


def create_organization(session: Session, name: str) -> Organization:
    name = require_text("name", name, MAX_NAME_LENGTH)
    if queries.get_by_name(session, name) is not None:
        raise AlreadyExists(f"organization {name!r} already exists")
    organization = Organization(id=new_id(), name=name, created_at=utcnow())
    session.add(organization)
    session.flush()
    return organization


def find_organization(session: Session, id_or_name: str) -> Organization:
    organization = queries.get(session, id_or_name) or queries.get_by_name(session, id_or_name)
    if organization is None:
        raise NotFound(f"organization {id_or_name!r} not found")
    return organization


def list_for(session: Session, principal: Principal) -> Sequence[Organization]:
    principal.require_listing("organizations")
    return queries.list_by_ids(session, [principal.organization_id])


def is_empty(session: Session) -> bool:
    return queries.count(session) == 0
