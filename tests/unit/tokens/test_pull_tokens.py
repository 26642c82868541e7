"""Pull tokens a build token asks for (GetPullToken / GetPullInfo with its build): they end with the build
token, so a build token leaked from a CI log cannot be turned into an hour of pulls after its build."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from opendepot.auth import Principal
from opendepot.builds import service as builds
from opendepot.clock import as_utc, utcnow
from opendepot.registry import service as registry
from opendepot.store import Store
from opendepot.tokens import service as tokens
from opendepot.tokens.models import Token
from tests.support.domain import organization_with_project


def expiry(store: Store, secret: str) -> datetime:
    with store.transaction() as session:
        principal = tokens.authenticate(session, secret)
        assert principal is not None
        row = session.scalars(select(Token).where(Token.id == principal.token_id)).one()
        assert row.expires_at is not None
        return as_utc(row.expires_at)


def test_a_build_tokens_pull_tokens_end_with_it(either_store: Store) -> None:
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        build, build_secret = builds.create_build(session, admin, project.id, [])
        build_id, project_id = build.id, project.id

    def as_build(session: Session) -> Principal:
        principal = tokens.authenticate(session, build_secret)
        assert isinstance(principal, Principal)
        return principal

    with store.transaction() as session:
        during, _ = registry.pull_token(session, as_build(session), None, build_id)
        by_admin, _ = registry.pull_token(session, admin, project_id, None)
    assert expiry(store, during) > utcnow() + timedelta(minutes=50)  # the build runs: the usual hour

    with store.transaction() as session:
        builds.finish_build(session, admin, build_id, builds.Outcome.success())
    ends = expiry(store, build_secret)
    assert ends <= utcnow() + tokens.BUILD_TOKEN_GRACE
    assert expiry(store, during) == ends  # expired with the build token by FinishBuild

    with store.transaction() as session:
        after, _ = registry.pull_token(session, as_build(session), None, build_id)
        info = registry.pull_info(session, as_build(session), build_id, "registry.example")
    assert expiry(store, after) == ends  # made in the grace: no longer than the build token
    assert expiry(store, info.password) == ends
    # The organization's own pull token is not the build's: it keeps its hour.
    assert expiry(store, by_admin) > utcnow() + timedelta(minutes=50)
