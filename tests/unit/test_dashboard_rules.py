"""The dashboard's rules that need no browser: who may open a session, and what a step row shows (its
platform and Dockerfile instruction parsed from BuildKit's vertex name, its state, its place in the
waterfall), how long a session lasts, and what a whole number in a query or form may be."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from opendepot.auth import Principal, TokenKind
from opendepot.builds.models import Build
from opendepot.builds.service import StepRecord
from opendepot.clock import as_utc, utcnow
from opendepot.dashboard import app, presentation, sessions
from opendepot.dashboard.models import DashboardSession
from opendepot.errors import InvalidArgument, PermissionDenied
from opendepot.migrations.schema import metadata
from opendepot.organizations.models import Organization
from opendepot.store import Store
from opendepot.tokens import service as tokens
from opendepot.tokens.secrets import hash_secret

START = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def record(
    n: int, name: str, *, cached: bool = False, error: str | None = None, done: bool = True
) -> StepRecord:
    return StepRecord(
        id=n,
        digest=f"sha256:{n}",
        name=name,
        started_at=START + timedelta(seconds=n),
        started_known=True,
        completed_at=START + timedelta(seconds=n + 1) if done else None,
        cached=cached,
        error=error,
        has_logs=False,
    )


def test_step_rows_parse_platform_instruction_state_and_waterfall() -> None:
    build = Build(
        id="b000000001",
        status="failed",
        options=[],
        created_at=START,
        started_at=START,
        finished_at=START + timedelta(seconds=10),
    )
    rows = presentation.step_rows(
        build,
        [
            record(0, "[internal] load build definition from Dockerfile"),
            record(2, "[linux/arm64 2/3] RUN make", cached=True),
            record(4, "[linux/amd64 3/3] RUN make test", error="exit code: 2"),
            record(6, "[stage-1 1/2] COPY --from=build /out /out", done=False),
        ],
        "linux/amd64",
    )
    assert [(r.platform, r.keyword, r.state) for r in rows] == [
        ("linux/amd64", "", "done"),
        ("linux/arm64", "RUN", "cached"),
        ("linux/amd64", "RUN", "error"),
        ("linux/amd64", "COPY", "canceled"),  # never completed, and the build is over
    ]
    assert rows[1].instruction == "RUN make" and rows[1].position == "2/3"
    assert rows[2].error == "exit code: 2"
    # Waterfall: offsets follow start times across the build's 10 s; every bar stays inside the track.
    assert [r.offset for r in rows[:3]] == [0.0, 20.0, 40.0]
    assert all(r.offset >= 0 and r.offset + r.width <= 100.01 for r in rows)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    db = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(db.engine)
    with db.transaction() as s:
        s.add(Organization(id="o000000001", name="acme", created_at=START))
    return db


def test_only_organization_and_user_tokens_open_sessions(store: Store) -> None:
    with store.transaction() as s:
        token, _secret = tokens.create_organization_token(s, "o000000001", "admin")
        opened = sessions.open_session(
            s, Principal(kind=TokenKind.ORGANIZATION, token_id=token.id, organization_id="o000000001")
        )
        for kind in (TokenKind.PROJECT, TokenKind.BUILD, TokenKind.PULL, TokenKind.OIDC):
            with pytest.raises(PermissionDenied, match="cannot sign in"):
                sessions.open_session(
                    s, Principal(kind=kind, token_id=token.id, organization_id="o000000001")
                )
    with store.transaction() as s:
        found = sessions.signed_in(s, opened.cookie_secret)
        assert found is not None and found.principal.token_id == token.id
        assert sessions.csrf_matches(found, opened.csrf_token)
        assert not sessions.csrf_matches(found, "") and not sessions.csrf_matches(found, "x" * 43)
        assert sessions.signed_in(s, "not-a-session") is None
    # Deleting the token ends its sessions; so does signing out.
    with store.transaction() as s:
        s.delete(s.get(type(token), token.id))
    with store.transaction() as s:
        assert sessions.signed_in(s, opened.cookie_secret) is None
        sessions.close_session(s, opened.cookie_secret)


def test_a_session_ends_when_its_token_expires(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    token_expires_at = utcnow() + timedelta(hours=1)  # well inside the 12 h session lifetime
    with store.transaction() as s:
        token, _secret = tokens.create_organization_token(s, "o000000001", "ci", token_expires_at)
        principal = Principal(kind=TokenKind.ORGANIZATION, token_id=token.id, organization_id="o000000001")
        capped = sessions.open_session(s, principal)
        # One opened before sign-in capped a session at its token's expiry: its own row says 12 h.
        uncapped = sessions.open_session(s, principal)
        s.execute(
            update(DashboardSession)
            .where(DashboardSession.secret_hash == hash_secret(uncapped.cookie_secret))
            .values(expires_at=utcnow() + sessions.SESSION_LIFETIME)
        )
    with store.transaction() as s:
        stored = s.scalar(
            select(DashboardSession.expires_at).where(
                DashboardSession.secret_hash == hash_secret(capped.cookie_secret)
            )
        )
        assert stored is not None and as_utc(stored) == token_expires_at
        assert sessions.signed_in(s, capped.cookie_secret) is not None
        assert sessions.signed_in(s, uncapped.cookie_secret) is not None
    # A minute after the token expired, neither session acts with it (it kept full write access).
    later = token_expires_at + timedelta(minutes=1)
    monkeypatch.setattr(sessions, "utcnow", lambda: later)
    with store.transaction() as s:
        assert sessions.signed_in(s, capped.cookie_secret) is None
        assert sessions.signed_in(s, uncapped.cookie_secret) is None


def test_started_by_names_the_token_kind_or_the_ci_identity() -> None:
    assert presentation.started_by("organization:abc1234567") == "organization token abc1234567"
    assert presentation.started_by("oidc:github:repo:acme/web") == "CI github:repo:acme/web"
    assert presentation.started_by(None) == "-"


def test_whole_numbers_in_queries_and_forms_are_ascii_digits() -> None:
    assert app._int("0", "after") == 0 and app._int("9" * 18, "after") == 10**18 - 1
    # str.isdigit() takes the superscript, the circled one and the Arabic-Indic three: each was a 500 or
    # an unexpected value, not a refusal naming the field.
    for bad in ("", "-1", "+1", " 1", "1\n", "1.0", "\u00b2", "\u2460", "\u0663", "9" * 19):
        with pytest.raises(InvalidArgument, match="after"):
            app._int(bad, "after")
