"""StartLogin and FinishLogin are public: what an anonymous caller can make the store keep is bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opendepot.clock import utcnow
from opendepot.errors import ResourceExhausted
from opendepot.logins import service as logins
from opendepot.logins.models import LoginRequest
from opendepot.store import Store
from tests.support.domain import organization_with_project

LIFETIME = timedelta(minutes=5)


def start(store: Store, address: str) -> LoginRequest:
    return store.call(lambda s: logins.start(s, LIFETIME, f"{address}:5000 (curl)", address))


def test_one_address_has_at_most_50_logins_waiting_and_others_still_start(
    either_store: Store,
) -> None:
    for _ in range(logins.MAX_WAITING_LOGINS_PER_ADDRESS):
        start(either_store, "10.0.0.1")
    with pytest.raises(ResourceExhausted, match="from this address"):
        start(either_store, "10.0.0.1")
    assert start(either_store, "10.0.0.2").client_address == "10.0.0.2"


def test_all_addresses_together_have_a_bound_too(
    either_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logins, "MAX_WAITING_LOGINS", 3)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        start(either_store, address)
    with pytest.raises(ResourceExhausted, match="too many logins"):
        start(either_store, "10.0.0.4")


def test_expired_requests_nobody_approved_are_deleted_at_once_approved_ones_kept_a_day(
    either_store: Store,
) -> None:
    def expire(login_id: str, ago: timedelta) -> None:
        with either_store.transaction() as session:
            row = session.get(LoginRequest, login_id)
            assert row is not None
            row.expires_at = utcnow() - ago

    ignored, approved, recent = (start(either_store, "10.0.0.1") for _ in range(3))
    with either_store.transaction() as session:
        _admin, project = organization_with_project(session)
        logins.approve(session, approved.approval_id or "", project.organization_id, "admin")
        logins.approve(session, recent.approval_id or "", project.organization_id, "admin")
    expire(ignored.id, timedelta(minutes=1))
    expire(approved.id, timedelta(days=2))
    expire(recent.id, timedelta(hours=1))
    start(either_store, "10.0.0.1")  # each start forgets what it may
    kept = either_store.read_now(lambda s: {row.id for row in s.query(LoginRequest)})
    assert ignored.id not in kept and approved.id not in kept
    assert recent.id in kept
