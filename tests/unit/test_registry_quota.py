"""--registry-quota-mib: a project whose images take its quota or more may pull but not push, and a build
that would save to it is refused before anything is written; other projects are not affected."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from opendepot.auth import Principal, TokenKind
from opendepot.builds.models import Build
from opendepot.clock import utcnow
from opendepot.errors import ResourceExhausted
from opendepot.organizations import service as organizations
from opendepot.registry import service as registry
from opendepot.registry.keys import Access
from opendepot.store import Store
from tests.support.domain import organization_with_project, project_of

QUOTA = 10 << 20


def test_a_push_is_refused_at_the_quota_and_a_pull_is_not(either_store: Store) -> None:
    store = either_store
    with store.transaction() as session:
        admin, full = organization_with_project(session, "full")
        roomy = project_of(session, admin, "roomy")
        registry.record_push(session, full.id, "a", "sha256:" + "1" * 64, "m", QUOTA - 1, utcnow())
    push = [Access("repository", full.id, ("pull", "push"))]
    with store.transaction() as session:  # just under: granted
        assert registry.grant(session, admin, push, QUOTA) == push
        registry.record_push(session, full.id, "b", "sha256:" + "2" * 64, "m", 1, utcnow())
    with store.transaction() as session:
        with pytest.raises(ResourceExhausted, match=r"its quota is 10 MiB \(--registry-quota-mib\)"):
            registry.grant(session, admin, push, QUOTA)
        pull = [Access("repository", full.id, ("pull",))]
        assert registry.grant(session, admin, pull, QUOTA) == pull
        other = [Access("repository", roomy.id, ("pull", "push"))]
        assert registry.grant(session, admin, other, QUOTA) == other
        assert registry.grant(session, admin, push, 0) == push  # no quota

    with (
        pytest.raises(ResourceExhausted, match="delete images to push again"),
        store.transaction() as session,
    ):
        registry.create_saving_build(session, admin, full.id, [{"save": True}], QUOTA)
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Build)) == 0  # nothing half-written
        build, _secret = registry.create_saving_build(session, admin, roomy.id, [{"save": True}], QUOTA)
        assert build.project_id == roomy.id


def test_a_request_naming_many_repositories_of_a_project_reads_it_once(store: Store) -> None:
    """The bounded scopes of one request (64) may all name repositories of one project: it is read and its
    quota summed once, not per scope."""
    with store.transaction() as session:
        admin, project = organization_with_project(session)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    many = [Access("repository", f"{project.id}/base-{i}", ("pull", "push")) for i in range(64)]
    event.listen(store.engine, "before_cursor_execute", count)
    try:
        with store.transaction() as session:
            assert registry.grant(session, admin, many, QUOTA) == many
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2, reads  # the project, then its images' bytes


def test_create_build_reads_the_storage_only_of_a_project_the_caller_may_build_in(store: Store) -> None:
    """CreateBuild checks the registry's storage (an async read, outside the transaction) for the project
    `pushable_project` names: only one the caller may create builds in, so another tenant's token, a pull or
    build token, or a made-up id cannot make it read (or learn) a project's quota."""
    with store.transaction() as session:
        admin, project = organization_with_project(session, "mine")
        other = organizations.create_organization(session, "another")
    stranger = Principal(kind=TokenKind.ORGANIZATION, token_id="s", organization_id=other.id)
    own = Principal(
        kind=TokenKind.PROJECT, token_id="p", organization_id=admin.organization_id, project_id=project.id
    )
    kinds = {
        kind: Principal(kind=kind, token_id="k", organization_id=admin.organization_id, project_id=project.id)
        for kind in (TokenKind.PULL, TokenKind.BUILD)
    }
    with store.transaction() as session:
        assert registry.pushable_project(session, admin, project.id) == project.id
        assert registry.pushable_project(session, own, None) == project.id  # a project token's own
        assert registry.pushable_project(session, stranger, project.id) is None
        assert registry.pushable_project(session, kinds[TokenKind.PULL], project.id) is None
        assert registry.pushable_project(session, kinds[TokenKind.BUILD], project.id) is None
        assert registry.pushable_project(session, admin, "bbbbbbbbbb") is None  # no such project
        assert registry.pushable_project(session, admin, "../../etc") is None  # no id at all
        assert registry.pushable_project(session, admin, None) is None


def test_the_blob_quota_follows_the_bytes_unless_set_and_counts_unnamed_blobs_apart() -> None:
    """--registry-quota-blobs: one file per 64 KiB of the bytes quota and at least 10,000 when unset; the
    refusal says how many of the blobs a garbage collection would free."""
    assert registry.blob_quota(1 << 20) == registry.MIN_BLOB_QUOTA
    assert registry.blob_quota(10 << 30) == (10 << 30) // registry.BYTES_PER_BLOB
    assert registry.blob_quota(10 << 30, 7) == 7
    registry.refuse_over_blob_quota("p", 6, 7)  # under: nothing
    with pytest.raises(ResourceExhausted) as refused:
        registry.refuse_over_blob_quota("p", 7, 7, unnamed=3)
    assert refused.value.message == (
        "project p keeps 7 blobs in the registry (3 of them no image names, freed by the registry's "
        "next garbage collection), its quota is 7 (--registry-quota-blobs): delete images to push again"
    )
