"""FinishBuild: the build's lease is released and its token ends after the grace for the CLI's last calls."""

from __future__ import annotations

from opendepot.builds import queries
from opendepot.builds import service as builds
from opendepot.builds.service import Outcome
from opendepot.clock import as_utc, utcnow
from opendepot.store import Store
from opendepot.tokens import queries as token_queries
from opendepot.tokens import service as tokens
from tests.support.domain import lease_of, organization_with_project


def test_finishing_releases_the_lease_and_ends_the_token_after_the_grace(store: Store) -> None:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        build, secret = builds.create_build(session, admin, project.id, [])
        other, other_secret = builds.create_build(session, admin, project.id, [])
        builds.acquire(session, admin, build.id, "amd64")
        builds.acquire(session, admin, other.id, "amd64")
    before = utcnow()
    with store.transaction() as session:
        builds.finish_build(session, admin, build.id, Outcome.success())
    with store.transaction() as session:
        lease, untouched = (
            lease_of(session, build.id, "amd64"),
            lease_of(session, other.id, "amd64"),
        )
        assert lease is not None and lease.released_at is not None and lease.released_at >= before
        assert untouched is not None and untouched.released_at is None
        # Still valid within the grace, for FinishBuild's and GetPullInfo's own calls.
        principal = tokens.authenticate(session, secret)
        assert principal is not None and principal.build_id == build.id
        assert tokens.authenticate(session, other_secret) is not None
    with store.transaction() as session:
        # A second FinishBuild changes nothing: the expiry stays where the first one set it.
        builds.finish_build(session, admin, build.id, Outcome.canceled())
    with store.transaction() as session:
        finished = queries.get(session, build.id)
        assert finished is not None and finished.status == "success"
        ended, unfinished = (
            token_queries.get(session, principal.token_id),
            tokens.authenticate(session, other_secret),
        )
        assert ended is not None and unfinished is not None
        expiry = ended.expires_at
        still = token_queries.get(session, unfinished.token_id)
        assert still is not None and still.expires_at is None
    assert expiry is not None
    grace = tokens.BUILD_TOKEN_GRACE
    assert before + grace <= as_utc(expiry) <= utcnow() + grace
