"""The per-RPC token read (`tokens.principal_lookup` run by `Store.read_row`): on file-backed SQLite it
reads on a DB-API connection of its own, elsewhere through the engine; either way revocation and expiry must
show on the very next read, whoever wrote them."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from opendepot.auth import TokenKind
from opendepot.clock import utcnow
from opendepot.store import Store
from opendepot.tokens import service as tokens
from tests.support.domain import organization_with_project


def read(store: Store, secret: str) -> object:
    return asyncio.run(store.read_row(tokens.principal_lookup(secret)))


def issue_organization_token(session):  # type: ignore[no-untyped-def]
    admin, _project = organization_with_project(session)
    return tokens.create_organization_token(session, admin.organization_id, "ci")


def test_same_principal_as_the_session_path(either_store: Store) -> None:
    store = either_store
    token, secret = store.call(issue_organization_token)
    found = read(store, secret)
    assert found == store.lookup(lambda c: tokens.authenticate(c, secret))
    assert found is not None and found.kind is TokenKind.ORGANIZATION and found.token_id == token.id
    assert read(store, secret + "x") is None
    assert read(store, "") is None


def test_revocation_by_another_process_shows_on_the_next_read(either_store: Store) -> None:
    store = either_store
    token, secret = store.call(issue_organization_token)
    assert read(store, secret) is not None  # the reader's connection is open now
    other = Store(store.url)  # the admin CLI, another worker: its own connections
    try:
        other.call(lambda s: tokens.revoke_organization_token(s, token.organization_id, token.id))
    finally:
        other.dispose()
    assert read(store, secret) is None


def test_expiry_is_read_as_an_aware_datetime_and_enforced(either_store: Store) -> None:
    store = either_store

    def issue(session):  # type: ignore[no-untyped-def]
        admin, _project = organization_with_project(session)
        soon = utcnow() + timedelta(seconds=3600)
        return tokens.create_organization_token(session, admin.organization_id, "ci", expires_at=soon)

    token, secret = store.call(issue)
    assert read(store, secret) is not None
    past = utcnow() - timedelta(seconds=1)
    store.call(lambda s: setattr(s.get(type(token), token.id), "expires_at", past))
    assert read(store, secret) is None


def test_an_in_memory_database_reads_through_the_engine() -> None:
    store = Store("sqlite://")
    store.migrate()
    try:
        _token, secret = store.call(
            lambda s: tokens.create_organization_token(
                s, organization_with_project(s)[0].organization_id, "ci"
            )
        )
        assert read(store, secret) is not None
    finally:
        store.dispose()
