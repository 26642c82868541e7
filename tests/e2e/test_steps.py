"""Steps and logs captured server-side from stock BuildKit (the gateway's status tap), read through
@depot/sdk-node: build.v1 GetBuildSteps / GetBuildStepLogs and core.v1 GetBuild / ListBuilds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendepot.builds.steps import MIN_LINE_COST
from tests.e2e.test_builds import build, builds_of, new_project
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import sdk_node
from tests.support.pages import every_item
from tests.support.server import Server

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))


def rpc(srv: Server, token: str, service: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
    [outcome] = sdk_node(
        srv.url, [{"service": service, "method": method, "token": token, "request": request}]
    )
    assert "ok" in outcome, outcome
    result: dict[str, Any] = outcome["ok"]
    return result


def steps_of(srv: Server, token: str, project: str, build_id: str) -> list[dict[str, Any]]:
    request = {"projectId": project, "buildId": build_id, "pageSize": 3}
    return every_item(
        lambda r: rpc(srv, token, "build.v1.BuildService", "getBuildSteps", r), request, "buildSteps"
    )


def logs_of(srv: Server, token: str, project: str, build_id: str, digest: str) -> list[str]:
    request = {"projectId": project, "buildId": build_id, "buildStepDigest": digest}
    return [
        line["message"]
        for line in rpc(srv, token, "build.v1.BuildService", "getBuildStepLogs", request).get("logs", [])
    ]


def run_steps(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in found if " RUN " in s["name"]]


def test_steps_logs_and_cache_figures(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    project = new_project(server, token, "steps")
    context = busybox_context(
        tmp_path / "ctx", "echo alpha-1; echo alpha-2", "echo beta-1 >&2", "sleep 1.2; echo gamma-1"
    )
    code, output = build(server, token, project, context)
    assert code == 0, output
    [first] = [b["id"] for b in builds_of(server, token, project)]

    found = steps_of(server, token, project, first)
    names = [s["name"] for s in found]
    assert "[depot] launching amd64 machine" in names  # what the CLI reported, merged in
    runs = run_steps(found)
    assert len(runs) == 3, names
    assert all(s["cacheState"] == "CACHE_STATE_UNCACHED" and s.get("hasLogs") for s in runs)
    assert all("completedAt" in s and "startedAt" in s for s in runs)
    by_marker = {m: next(s for s in runs if m in s["name"]) for m in ("alpha", "beta", "gamma")}
    assert logs_of(server, token, project, first, by_marker["alpha"]["digest"]) == ["alpha-1", "alpha-2"]
    assert logs_of(server, token, project, first, by_marker["beta"]["digest"]) == ["beta-1"]
    assert logs_of(server, token, project, first, by_marker["gamma"]["digest"]) == ["gamma-1"]

    code, output = build(server, token, project, context)
    assert code == 0, output
    second = builds_of(server, token, project)[0]["id"]
    again = run_steps(steps_of(server, token, project, second))
    assert len(again) == 3 and all(s["cacheState"] == "CACHE_STATE_CACHED" for s in again)
    summary = rpc(server, token, "core.v1.BuildService", "getBuild", {"buildId": second})["build"]
    assert summary["status"] == "STATUS_SUCCESS"
    assert summary["cachedSteps"] >= 4 and summary["totalSteps"] > summary["cachedSteps"] - 1
    # The cached steps took over a second when they ran for real (the sleep in gamma).
    assert summary["savedDurationSeconds"] >= 1
    assert summary["finishedAt"] and summary["startedAt"]
    listed = rpc(server, token, "core.v1.BuildService", "listBuilds", {"projectId": project})["builds"]
    assert [b["buildId"] for b in listed] == [second, first]


def test_failed_step_carries_its_error(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    project = new_project(server, token, "step-fails")
    code, _output = build(server, token, project, busybox_context(tmp_path / "ctx", "echo doomed; exit 5"))
    assert code != 0
    [failed] = builds_of(server, token, project)
    assert failed["status"] == "failed"
    [step] = run_steps(steps_of(server, token, project, failed["id"]))
    assert "exit code: 5" in step["error"]
    assert logs_of(server, token, project, failed["id"], step["digest"]) == ["doomed"]
    summary = rpc(server, token, "core.v1.BuildService", "getBuild", {"buildId": failed["id"]})["build"]
    assert summary["status"] == "STATUS_FAILED"


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("capped")
    srv = Server(data_dir=root / "data", database_url=None, extra_args=["--build-log-limit-mib", "1"]).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_logs_past_the_cap_are_truncated_with_a_marker(capped: Server, tmp_path: Path) -> None:
    token = capped.admin_token
    project = new_project(capped, token, "noisy")
    # About 1.4 MiB over 8 s: BuildKit itself clips step output past 200 KiB/s, so pace it.
    noisy = (
        "r=0; while [ $r -lt 8 ]; do i=0; while [ $i -lt 1800 ]; do echo line-$r-$i-$(printf %090d 0); "
        "i=$((i+1)); done; r=$((r+1)); sleep 1; done"
    )
    code, output = build(capped, token, project, busybox_context(tmp_path / "ctx", noisy))
    assert code == 0, output[-2000:]
    [built] = builds_of(capped, token, project)
    [step] = run_steps(steps_of(capped, token, project, built["id"]))
    lines = every_log_line(capped, token, project, built["id"], step["digest"])
    assert lines[0].startswith("line-0-0-")
    assert "log truncated" in lines[-1]
    assert sum(len(x) + 1 for x in lines[:-1]) <= 1 << 20
    assert len(lines) < 8 * 1800


def test_share_build_gives_a_read_only_page_until_revoked(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    _other, other_token = server.new_organization()
    project = new_project(server, token, "shared")
    code, output = build(server, token, project, busybox_context(tmp_path / "ctx", "echo shared-step"))
    assert code == 0, output
    [built] = builds_of(server, token, project)
    share_url = rpc(server, token, "core.v1.BuildService", "shareBuild", {"buildId": built["id"]})["shareUrl"]
    assert share_url.startswith(f"{server.url}/shared/")
    page = httpx.get(share_url, timeout=30)
    assert page.status_code == 200 and "echo shared-step" in page.text and built["id"] in page.text
    [refused] = sdk_node(
        server.url,
        [
            {
                "service": "core.v1.BuildService",
                "method": "shareBuild",
                "token": other_token,
                "request": {"buildId": built["id"]},
            }
        ],
    )
    assert refused["error"]["code"] == "permission_denied"
    assert rpc(server, token, "core.v1.BuildService", "stopSharingBuild", {"buildId": built["id"]}) == {}
    assert httpx.get(share_url, timeout=30).status_code == 404


def test_deleting_a_project_with_builds_removes_everything(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    project = new_project(server, token, "doomed")
    code, output = build(server, token, project, busybox_context(tmp_path / "ctx", "echo soon-gone"))
    assert code == 0, output
    [built] = builds_of(server, token, project)
    assert rpc(server, token, "core.v1.ProjectService", "deleteProject", {"projectId": project}) == {}
    [gone] = sdk_node(
        server.url,
        [
            {
                "service": "core.v1.BuildService",
                "method": "getBuild",
                "token": token,
                "request": {"buildId": built["id"]},
            }
        ],
    )
    assert gone["error"]["code"] == "not_found"
    assert not (server.data_dir / "projects" / project).exists()
    assert not (server.data_dir / "pki" / project).exists()


def test_a_step_that_prints_nul_bytes_keeps_its_steps_and_logs(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    """Binary output is ordinary in a build log (PostgreSQL's text refuses a NUL character)."""
    _org, token = org
    project = new_project(server, token, "nul-bytes")
    context = busybox_context(
        tmp_path / "ctx", "printf before; head -c 2 /dev/zero; echo after; echo plain-line"
    )
    code, output = build(server, token, project, context)
    assert code == 0, output
    [built] = builds_of(server, token, project)
    [step] = run_steps(steps_of(server, token, project, built["id"]))
    assert step.get("hasLogs") and "completedAt" in step
    # A NUL reads as U+FFFD. Where lines break depends on how BuildKit cut the output into chunks (a line
    # cut across two chunks becomes two lines), so the text is compared without the breaks.
    lines = logs_of(server, token, project, built["id"], step["digest"])
    assert "".join(lines) == "before\ufffd\ufffdafterplain-line"


def test_a_flood_of_empty_lines_is_cut_at_the_least_cost_of_a_line(capped: Server, tmp_path: Path) -> None:
    """A RUN step printing newlines only: each line costs steps.MIN_LINE_COST of the 1 MiB cap, so the build
    keeps at most 16,384 rows. Before, the cap counted bytes alone: a million rows for 1 MiB of newlines,
    over a minute of the recorder's time and gigabytes of its memory."""
    token = capped.admin_token
    project = new_project(capped, token, "newlines")
    # 4 x 150,000 newlines, paced under BuildKit's own 200 KiB/s clip.
    flood = "r=0; while [ $r -lt 4 ]; do yes '' | head -c 150000; r=$((r+1)); sleep 1; done"
    started = time.monotonic()
    code, output = build(capped, token, project, busybox_context(tmp_path / "ctx", flood))
    assert code == 0, output[-2000:]
    [built] = builds_of(capped, token, project)
    [step] = run_steps(steps_of(capped, token, project, built["id"]))
    lines = every_log_line(capped, token, project, built["id"], step["digest"])
    assert "log truncated" in lines[-1]
    assert set(lines[:-1]) == {""} and len(lines) - 1 == (1 << 20) // MIN_LINE_COST
    assert time.monotonic() - started < 60  # the build, and its steps recorded, in well under a minute


def every_log_line(srv: Server, token: str, project: str, build_id: str, digest: str) -> list[str]:
    request = {"projectId": project, "buildId": build_id, "buildStepDigest": digest, "pageSize": 1000}
    logs = every_item(
        lambda r: rpc(srv, token, "build.v1.BuildService", "getBuildStepLogs", r), request, "logs"
    )
    return [line.get("message", "") for line in logs]  # proto3 JSON omits an empty message
