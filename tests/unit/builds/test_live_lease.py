"""The gateway's admission query: a connection is let through only while its build holds a live lease on that
platform, in that project; it carries the lease's hardware for the memory watch."""

from __future__ import annotations

from opendepot.builds import queries
from opendepot.builds import service as builds
from opendepot.builds.service import Outcome
from opendepot.store import Store
from tests.support.domain import lease_of, organization_with_project, project_of


def live(store: Store, project_id: str, build_id: str, platform: str = "amd64") -> str | None:
    return store.lookup(lambda c: queries.live_lease_hardware(c, project_id, build_id, platform))


def test_only_a_running_build_with_an_unreleased_lease_in_its_project_is_live(either_store: Store) -> None:
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        other_project = project_of(session, admin, "api")
        build, _ = builds.create_build(session, admin, project.id, [])
        waiting, _ = builds.create_build(session, admin, project.id, [])
        builds.acquire(session, admin, build.id, "amd64")
        hardware = lease_of(session, build.id, "amd64")
        assert hardware is not None
        expected = hardware.hardware

    assert expected and live(store, project.id, build.id) == expected
    assert live(store, project.id, build.id, "arm64") is None  # no lease on that platform
    assert live(store, other_project.id, build.id) is None  # another project's CA cannot name it
    assert live(store, project.id, waiting.id) is None  # never acquired
    assert live(store, project.id, "nosuchbuild") is None

    with store.transaction() as session:
        builds.finish_build(session, admin, build.id, Outcome.success())
    assert live(store, project.id, build.id) is None  # released with the build's end
