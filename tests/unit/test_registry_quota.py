"""--registry-quota-mib: a project whose images take its quota or more may pull but not push, and a build
that would save to it is refused before anything is written; other projects are not affected."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from opendepot.builds.models import Build
from opendepot.clock import utcnow
from opendepot.errors import ResourceExhausted
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
