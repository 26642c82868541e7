"""--build-retention-days: a real build made with the depot CLI is listed, then, once it finished longer ago
than the retention, deleted with its steps and logs; a build still running stays, however old."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from opendepot.builds import service as builds
from opendepot.builds.models import LogLine, Step
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from tests.e2e.test_builds import build, builds_of, new_project
from tests.support.builds import builds_possible, busybox_context
from tests.support.server import Server

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
RETENTION_DAYS = 0.0001  # 8.64 s; the sweep looks every second


def rpc(server: Server, method: str, body: dict[str, str], token: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/{method}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60
    )


def kept_rows(store: Store, build_id: str) -> tuple[int, int]:
    with store.transaction() as session:
        steps = session.scalar(select(func.count()).select_from(Step).where(Step.build_id == build_id))
        lines = session.scalar(select(func.count()).select_from(LogLine).where(LogLine.build_id == build_id))
        return int(steps or 0), int(lines or 0)


def test_finished_builds_are_deleted_after_the_retention(tmp_path: Path) -> None:
    srv = Server(
        data_dir=tmp_path / "data",
        database_url=None,
        extra_args=["--build-retention-days", str(RETENTION_DAYS)],
    ).start()
    store = Store(sqlite_url(srv.data_dir))
    try:
        _org, token = srv.new_organization()
        project = new_project(srv, token, "kept-a-while")
        running = rpc(srv, "depot.build.v1.BuildService/CreateBuild", {"projectId": project}, token).json()
        context = busybox_context(tmp_path / "ctx", "echo retention-probe")
        code, output = build(srv, token, project, context)
        assert code == 0, output
        finished = {b["id"] for b in builds_of(srv, token, project)} - {running["buildId"]}
        assert len(finished) == 1, finished
        (finished_id,) = finished
        deadline = time.monotonic() + 5
        while kept_rows(store, finished_id)[1] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the status tap's recorder writes the last lines just after the build
        steps, lines = kept_rows(store, finished_id)
        assert steps > 0 and lines > 0, (steps, lines)

        deadline = time.monotonic() + 60
        listed = {b["id"] for b in builds_of(srv, token, project)}
        while finished_id in listed and time.monotonic() < deadline:
            time.sleep(1)
            listed = {b["id"] for b in builds_of(srv, token, project)}
        assert listed == {running["buildId"]}, listed
        gone = rpc(srv, "depot.core.v1.BuildService/GetBuild", {"buildId": finished_id}, token)
        assert gone.status_code == 404 and gone.json()["code"] == "not_found", gone.text
        assert kept_rows(store, finished_id) == (0, 0)
        still = rpc(srv, "depot.core.v1.BuildService/GetBuild", {"buildId": running["buildId"]}, token)
        assert still.status_code == 200 and still.json()["build"]["status"] == "STATUS_RUNNING", still.text
        assert "deleted 1 build(s) that finished over 0.0001 day(s) ago" in srv.log_text()
    finally:
        store.dispose()
        srv.stop()


def org_kept_bytes(store: Store, organization_id: str) -> int:
    """What the organization's builds keep, as the quota counts it (log lines and status reports)."""
    with store.transaction() as session:
        return dict(builds.over_history_quota(session, 0)).get(organization_id, 0)


def test_an_organization_over_its_history_quota_loses_its_oldest_builds(tmp_path: Path) -> None:
    """--build-history-quota-mib 1: four depot CLI builds that each log ~450 KB (over 3 s: BuildKit clips a
    step's logs past 200 KiB/s); the sweep (every 30 s) deletes the oldest ones with their steps and logs
    until the organization keeps at most 1 MiB, keeps the newest whole, and leaves another organization
    alone."""
    srv = Server(
        data_dir=tmp_path / "data", database_url=None, extra_args=["--build-history-quota-mib", "1"]
    ).start()
    store = Store(sqlite_url(srv.data_dir))
    try:
        org, token = srv.new_organization()
        _other_org, other_token = srv.new_organization()
        project, theirs = new_project(srv, token, "chatty"), new_project(srv, other_token, "quiet")
        code, output = build(srv, other_token, theirs, busybox_context(tmp_path / "quiet", "echo quiet"))
        assert code == 0, output
        order: list[str] = []
        for i in range(4):
            # 3 x 2,000 lines of 75 bytes a second apart, a new step each time (a cached step would log
            # nothing).
            text = f"{i}-" + "0123456789abcdefghijklmnopqrstuvwxyz" * 2
            line = f"for j in 1 2 3; do yes {text} | head -n 2000; sleep 1; done"
            code, output = build(srv, token, project, busybox_context(tmp_path / f"ctx{i}", line))
            assert code == 0, output
            new = {b["id"] for b in builds_of(srv, token, project)} - set(order)
            assert len(new) == 1, new
            order.extend(new)
        newest = order[-1]
        deadline = time.monotonic() + 10
        while kept_rows(store, newest)[1] < 6_000 and time.monotonic() < deadline:
            time.sleep(0.1)  # the recorder writes the last lines just after the build
        kept = kept_rows(store, newest)
        assert kept[1] >= 6_000, kept

        deadline = time.monotonic() + 75
        while org_kept_bytes(store, org) > 1 << 20 and time.monotonic() < deadline:
            time.sleep(1)
        assert org_kept_bytes(store, org) <= 1 << 20
        still = {b["id"] for b in builds_of(srv, token, project)}
        listed = [b for b in order if b in still]
        assert 1 <= len(listed) < len(order), (listed, order)  # ~1.8 MiB were kept: some went
        assert listed == order[-len(listed) :], (listed, order)  # the oldest went, and only they
        for gone in order[: -len(listed)]:
            assert kept_rows(store, gone) == (0, 0)
        assert kept_rows(store, newest) == kept  # the newest finished build is kept whole
        assert len(builds_of(srv, other_token, theirs)) == 1
        assert "over --build-history-quota-mib 1: deleted its" in srv.log_text()
    finally:
        store.dispose()
        srv.stop()
