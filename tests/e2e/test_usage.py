"""UsageService from metered facts: real builds, then every figure checked against values computed here
from the recorded rows and from BuildKit's own disk usage (`buildctl du`)."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opendepot.builds.models import Build, Lease
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from opendepot.usage.models import CacheSample
from tests.e2e.test_builds import build, new_project
from tests.support.builds import VENV_BIN, builds_possible, busybox_context
from tests.support.clients import sdk_node, ts
from tests.support.server import Server

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
GIB = 1 << 30


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("usage")
    srv = Server(
        data_dir=root / "data", database_url=None, extra_args=["--usage-sample-seconds", "0.5"]
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def call(srv: Server, method: str, request: dict[str, Any]) -> dict[str, Any]:
    [outcome] = sdk_node(
        srv.url,
        [{"service": "core.v1.UsageService", "method": method, "token": srv.admin_token, "request": request}],
    )
    return outcome


def test_usage_figures_match_the_recorded_facts(metered: Server, tmp_path: Path) -> None:
    token = metered.admin_token
    start = datetime.now(UTC) - timedelta(seconds=1)
    project = new_project(metered, token, "metered")
    context = busybox_context(tmp_path / "ctx", "sleep 1.2; echo slow", "echo quick")
    for _ in range(2):
        code, output = build(metered, token, project, context)
        assert code == 0, output
    time.sleep(1.5)  # at least one cache sample after the builds
    end = datetime.now(UTC) + timedelta(seconds=1)

    store = Store(sqlite_url(metered.data_dir))
    try:
        builds = store.read_now(
            lambda s: s.query(Build).filter(Build.project_id == project).order_by(Build.created_at).all()
        )
        leases = store.read_now(lambda s: s.query(Lease).filter(Lease.project_id == project).all())
        sample = store.read_now(
            lambda s: (
                s.query(CacheSample)
                .filter(CacheSample.project_id == project)
                .order_by(CacheSample.sampled_at.desc())
                .first()
            )
        )
    finally:
        store.dispose()
    assert len(builds) == 2 and sample is not None
    seconds = 0.0
    for b in builds:
        assert b.finished_at is not None and b.started_at is not None
        seconds += (b.finished_at - b.started_at).total_seconds()
    duration = int(seconds)
    billed = 0.0
    for lease in leases:  # default hardware 16x32: one unit per started minute, from when it was served
        assert lease.released_at is not None and lease.hardware == "16x32"
        assert lease.served_at is not None and lease.served_at >= lease.acquired_at
        billed += math.ceil((lease.released_at - lease.served_at).total_seconds() / 60)
    du = subprocess.run(
        [
            str(VENV_BIN / "buildctl"),
            "--addr",
            f"unix://{metered.data_dir}/run/{project}-amd64.sock",
            "du",
            "--format",
            "{{json .}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    disk = sum(int(r["size"]) for r in json.loads(du.stdout))
    assert sample.bytes == disk > 0

    got = call(metered, "getProjectUsage", {"projectId": project, "startAt": ts(start), "endAt": ts(end)})[
        "ok"
    ]
    assert got["usage"] == {
        "projectId": project,
        "buildCount": 2,
        "buildDurationSeconds": duration,
        **({"layerCacheSizeGb": round(disk / GIB)} if round(disk / GIB) else {}),
    }

    overall = call(metered, "getUsage", {"startAt": ts(start), "endAt": ts(end)})["ok"]
    [mine] = [c for c in overall["containerBuild"] if c["projectName"] == "metered"]
    assert mine["buildCount"] == 2
    assert mine["minutesBilled"] == pytest.approx(billed)
    assert mine["minutesSaved"] >= 1.2 / 60  # the slow step, cached the second time
    assert {s["storageType"] for s in overall["storage"]} == {"cache", "registry"}
    assert "githubActionsJobs" not in overall and "agentSandbox" not in overall

    # The average over a period that starts at the last sample is that sample, exactly.
    sampled_at = sample.sampled_at
    window = call(
        metered, "getUsage", {"startAt": ts(sampled_at), "endAt": ts(sampled_at + timedelta(seconds=10))}
    )
    [cache] = [s for s in window["ok"]["storage"] if s["storageType"] == "cache"]
    assert cache["totalGb"] == pytest.approx(disk / GIB, rel=1e-4)

    # Half-open periods, counted by each build's start.
    second = builds[1].created_at
    before = call(
        metered, "getProjectUsage", {"projectId": project, "startAt": ts(start), "endAt": ts(second)}
    )
    after = call(metered, "getProjectUsage", {"projectId": project, "startAt": ts(second), "endAt": ts(end)})
    assert before["ok"]["usage"]["buildCount"] == 1 and after["ok"]["usage"]["buildCount"] == 1

    listed = call(metered, "listProjectUsage", {"startAt": ts(start), "endAt": ts(end)})["ok"]["usage"]
    assert [u["projectId"] for u in listed if u.get("buildCount")] == [project]

    csv_out = metered.admin(
        "usage", "--org", "default", "--from", start.isoformat(), "--to", end.isoformat(), "--csv"
    )
    assert f"{project},metered,2,{duration}," in csv_out


def test_usage_periods_are_validated(metered: Server) -> None:
    now = datetime.now(UTC)
    missing = call(metered, "getUsage", {"endAt": ts(now)})
    assert missing["error"]["code"] == "invalid_argument" and "start_at" in missing["error"]["message"]
    reversed_ = call(metered, "getUsage", {"startAt": ts(now), "endAt": ts(now - timedelta(hours=1))})
    assert reversed_["error"]["code"] == "invalid_argument" and "end_at" in reversed_["error"]["message"]
    unknown = call(
        metered,
        "getProjectUsage",
        {"projectId": "zzzzzzzzzz", "startAt": ts(now - timedelta(hours=1)), "endAt": ts(now)},
    )
    assert unknown["error"]["code"] == "not_found"
