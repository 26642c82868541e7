"""--build-retention-days: a real build made with the depot CLI is listed, then, once it finished longer ago
than the retention, deleted with its steps and logs; a build still running stays, however old."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

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
