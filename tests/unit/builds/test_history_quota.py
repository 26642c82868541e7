"""--build-history-quota-mib: an organization whose builds keep more log lines and status reports than the
quota loses its oldest finished builds, whole, until it is back under it; its newest finished build and its
running builds stay, and another organization is not touched."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.builds import queries, steps
from opendepot.builds import service as builds
from opendepot.builds.models import Build, LogLine, Step
from opendepot.organizations import service as organizations
from opendepot.server.retention import BuildRetention
from opendepot.store import Store
from tests.support.domain import organization_with_project, project_of
from tests.unit.builds.test_retention import NOW

MIB = 1 << 20


def kept_build(
    session: Session,
    admin: Principal,
    project_id: str,
    age_minutes: int,
    log_bytes: int,
    finished: bool = True,
) -> str:
    """A build created `age_minutes` ago whose logs count log_bytes and status reports MIB / 2, with one log
    line; finished unless told otherwise."""
    created, _secret = builds.create_build(session, admin, project_id, [])
    build = session.get(Build, created.id)  # the tracked row
    assert build is not None
    build.created_at = NOW - timedelta(minutes=age_minutes)
    if finished:
        build.status, build.finished_at = "success", build.created_at + timedelta(minutes=1)
    build.status_bytes = MIB // 2
    build.options_bytes = 0  # "[]" counts 2 bytes: left out to keep the sums round
    queries.add_log_volume(session, build.id).bytes = log_bytes
    session.add(Step(build_id=build.id, project_id=project_id, digest="sha256:0", name="", started_at=NOW))
    queries.insert_log_lines(
        session, [{"build_id": build.id, "digest": "sha256:0", "stream": 1, "logged_at": NOW, "text": "x"}]
    )
    session.flush()
    return build.id


def remaining(store: Store) -> set[str]:
    with store.transaction() as session:
        return set(session.scalars(select(Build.id)))


def test_the_oldest_finished_builds_go_until_the_organization_is_under_its_quota(either_store: Store) -> None:
    store = either_store
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        second = project_of(session, admin, "second")
        # 1.5 MiB each, the oldest first; the quota counts over the organization's projects.
        b1 = kept_build(session, admin, project.id, 40, MIB)
        kept_build(session, admin, second.id, 30, MIB)
        b3 = kept_build(session, admin, project.id, 20, MIB)
        b4 = kept_build(session, admin, second.id, 10, MIB)
        running = kept_build(session, admin, project.id, 50, MIB // 2, finished=False)  # 1 MiB, the oldest
        other_org = organizations.create_organization(session, "other")
        neighbour = Principal(kind=TokenKind.ORGANIZATION, token_id="n", organization_id=other_org.id)
        theirs = kept_build(session, neighbour, project_of(session, neighbour, "theirs").id, 60, 20 * MIB)

    with store.transaction() as session:
        over = dict(builds.over_history_quota(session, 4 * MIB))
    assert over == {admin.organization_id: 3 * MIB, other_org.id: 16 * MIB + MIB // 2}

    with store.transaction() as session:  # 3 MiB over: the two oldest finished builds cover it
        assert builds.prune_history_slice(session, admin.organization_id, 3 * MIB) == (2, 4, 3 * MIB)
    assert remaining(store) == {b3, b4, running, theirs}
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LogLine).where(LogLine.build_id == b1)) == 0
        assert builds.over_history_quota(session, 4 * MIB) == [(other_org.id, 16 * MIB + MIB // 2)]

    # However far over, the newest finished build and the running one stay; so does the other
    # organization's one build, its newest.
    with store.transaction() as session:
        assert builds.prune_history_slice(session, admin.organization_id, 100 * MIB) == (1, 2, 3 * MIB // 2)
        assert builds.prune_history_slice(session, admin.organization_id, 100 * MIB) == (0, 0, 0)
        assert builds.prune_history_slice(session, other_org.id, 100 * MIB) == (0, 0, 0)
    assert remaining(store) == {b4, running, theirs}


def test_the_loop_brings_every_organization_under_its_quota(store: Store) -> None:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        kept = [kept_build(session, admin, project.id, 100 - i, MIB) for i in range(6)]  # 1.5 MiB each
        other_org = organizations.create_organization(session, "other")
        neighbour = Principal(kind=TokenKind.ORGANIZATION, token_id="n", organization_id=other_org.id)
        theirs = project_of(session, neighbour, "theirs").id
        their_builds = [kept_build(session, neighbour, theirs, 100 - i, MIB) for i in range(2)]

    loop = BuildRetention(store, None, 4 * MIB)
    assert loop.interval == 30.0
    asyncio.run(loop.run_once())
    # 9 MiB against 4: the four oldest go (6 MiB), leaving 3; 3 MiB is under the quota already.
    assert remaining(store) == {*kept[4:], *their_builds}
    asyncio.run(loop.run_once())
    assert remaining(store) == {*kept[4:], *their_builds}  # nothing more to do


def test_build_options_count_against_the_quota(either_store: Store) -> None:
    """Builds with no logs but 250 KiB of options each: the quota used to see nothing of them."""
    store = either_store
    options = [{"tags": ["x" * (250 << 10)]}]
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        made = []
        for age in (30, 20, 10):
            created, _secret = builds.create_build(session, admin, project.id, options)
            build = session.get(Build, created.id)
            assert build is not None
            build.created_at = NOW - timedelta(minutes=age)
            build.status, build.finished_at = "success", build.created_at + timedelta(minutes=1)
            made.append(build.id)
        session.flush()
    each = len('[{"tags":["' + "x" * (250 << 10) + '"]}]')
    with store.transaction() as session:
        assert dict(builds.over_history_quota(session, MIB // 2)) == {
            admin.organization_id: 3 * each - MIB // 2
        }
        # The oldest goes first; the newest finished build always stays.
        assert builds.prune_history_slice(session, admin.organization_id, 3 * each - MIB // 2) == (1, 0, each)
    assert remaining(store) == set(made[1:])


def test_step_rows_count_against_the_quota(either_store: Store) -> None:
    """A build's status reports may make 2,000 steps of 1 KiB names and 4 KiB errors (~10 MiB of rows): the
    quota used to see none of it. Each row counts its text in UTF-8 and STEP_ROW_BYTES, once; a later write
    that grows a row counts only what it adds, one that changes nothing counts nothing."""
    store = either_store
    name, error = "n" * steps.MAX_STEP_NAME, "é" * (steps.MAX_STEP_ERROR // 2)  # 2 bytes a character
    vertices = [
        steps.VertexUpdate(f"sha256:{i:064x}", name, NOW, NOW, False, error) for i in range(steps.MAX_STEPS)
    ]
    row = steps.STEP_ROW_BYTES + len(vertices[0].digest) + len(name) + steps.MAX_STEP_ERROR
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        created, _secret = builds.create_build(session, admin, project.id, [])
        build_id = created.id
        options = session.get(Build, build_id).options_bytes  # type: ignore[union-attr]
    with store.transaction() as session:
        steps.apply(session, build_id, vertices, [])
    kept = options + steps.MAX_STEPS * row
    assert kept > 10 * MIB
    with store.transaction() as session:
        assert dict(builds.over_history_quota(session, MIB)) == {admin.organization_id: kept - MIB}
    # The same reports again (the CLI and the gateway's tap both report): nothing more is kept.
    with store.transaction() as session:
        steps.apply(session, build_id, vertices, [])
    # One step renamed longer by 3 bytes, and over the cap: its name is cut at MAX_STEP_NAME characters.
    longer = steps.VertexUpdate(vertices[0].digest, "€" + name, None, None, False, "")
    with store.transaction() as session:
        steps.apply(session, build_id, [longer], [])
        assert dict(builds.over_history_quota(session, MIB)) == {admin.organization_id: kept - MIB + 2}
