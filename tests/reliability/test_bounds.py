"""Bounds on what a build token can make the store keep, through a real `opendepot serve`: steps per build,
step name and error length, log lines (each at its least cost), and the size of a build's options."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendepot.builds import service as builds
from opendepot.builds import steps
from tests.support.pages import every_item
from tests.support.server import Server

from .processes import api_workers, peak_rss_bytes

LOG_LIMIT_MIB = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        data_dir=tmp_path_factory.mktemp("bounds") / "data",
        database_url=None,
        extra_args=["--build-log-limit-mib", str(LOG_LIMIT_MIB)],
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def rpc(server: Server, path: str, body: dict[str, Any], token: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/{path}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=60
    )


def new_project(server: Server, name: str) -> tuple[str, str]:
    """A new organization's token and a project in it."""
    _org, token = server.new_organization()
    created = rpc(server, "depot.core.v1.ProjectService/CreateProject", {"name": name}, token).json()
    return token, created["project"]["projectId"]


def new_build(server: Server, project: str, token: str) -> tuple[str, str]:
    """A build of the project: its id and build token."""
    build = rpc(server, "depot.build.v1.BuildService/CreateBuild", {"projectId": project}, token).json()
    return build["buildId"], build["buildToken"]


def listed(server: Server, method: str, request: dict[str, Any], token: str) -> dict[str, Any]:
    """One page of a build.v1 list RPC."""
    page: dict[str, Any] = rpc(server, f"depot.build.v1.BuildService/{method}", request, token).json()
    return page


def stream(server: Server, message: dict[str, Any], token: str) -> httpx.Response:
    """One message on the CLI's status stream (ReportStatusStream), which merges vertices into steps."""
    raw = json.dumps(message).encode()
    return httpx.post(
        f"{server.url}/depot.cli.v1.BuildService/ReportStatusStream",
        content=b"\0" + len(raw).to_bytes(4, "big") + raw,
        headers={"authorization": f"Bearer {token}", "content-type": "application/connect+json"},
        timeout=60,
    )


def test_steps_per_build_are_bounded_and_the_excess_is_marked(server: Server, tmp_path: Path) -> None:
    token, project = new_project(server, "b")
    build_id, build_token = new_build(server, project, token)
    total = steps.MAX_STEPS + 300
    for start in range(0, total, 200):
        vertexes = [
            {"digest": f"sha256:{i:064x}", "name": "RUN " + "x" * 5000, "error": "e" * 10_000}
            for i in range(start, min(start + 200, total))
        ]
        r = stream(server, {"buildId": build_id, "statuses": [{"vertexes": vertexes}]}, build_token)
        assert r.status_code == 200 and b'"error"' not in r.content, r.content[-300:]
    # An overlong digest is dropped, not a database error.
    r = stream(
        server,
        {"buildId": build_id, "statuses": [{"vertexes": [{"digest": "d" * 5000, "name": "n"}]}]},
        build_token,
    )
    assert r.status_code == 200 and b'"error"' not in r.content, r.content[-300:]
    request = {"projectId": project, "buildId": build_id, "pageSize": 1000}
    found = every_item(lambda r: listed(server, "GetBuildSteps", r, token), request, "buildSteps")
    names = [s.get("name", "") for s in found]
    assert len(names) == steps.MAX_STEPS + 1, len(names)
    assert steps.STEPS_TRUNCATED.format(cap=steps.MAX_STEPS) in names
    assert max(len(n) for n in names) <= steps.MAX_STEP_NAME


def test_a_status_message_of_newlines_keeps_at_most_the_log_limit_over_the_least_line_cost(
    server: Server,
) -> None:
    """A build token's one status message carrying 8 MiB of newlines: each line costs steps.MIN_LINE_COST
    of the server's 4 MiB log limit, so 65,536 empty lines and the marker are kept, as plain rows. Before, the
    limit counted bytes and each line was an ORM object: 8 million rows and gigabytes of an API worker's
    memory (half a MiB of newlines alone: 23 s and 1.3 GB; at that rate 8 MiB would need ~20 GB)."""
    token, project = new_project(server, "n")
    build_id, build_token = new_build(server, project, token)
    digest = f"sha256:{7:064x}"
    assert server.process is not None
    workers = api_workers(server.process.pid)
    peak_before = {p: peak_rss_bytes(p) for p in workers}
    flood = {"vertex": digest, "stream": 1, "msg": base64.b64encode(b"\n" * (8 << 20)).decode()}
    vertex = {"digest": digest, "name": "RUN flood"}
    message = {"buildId": build_id, "statuses": [{"vertexes": [vertex]}, {"logs": [flood]}]}
    started = time.monotonic()
    r = stream(server, message, build_token)
    took = time.monotonic() - started
    assert r.status_code == 200 and b'"error"' not in r.content, r.content[-300:]
    growth = {p: peak_rss_bytes(p) - peak_before[p] for p in workers}
    print(f"8 MiB of newlines in one status message: {took:.1f} s; workers' peak RSS growth {growth}")
    assert all(g < 128 << 20 for g in growth.values()), growth
    request = {"projectId": project, "buildId": build_id, "buildStepDigest": digest, "pageSize": 1000}
    logs = every_item(lambda r: listed(server, "GetBuildStepLogs", r, token), request, "logs")
    lines = [line.get("message", "") for line in logs]  # proto3 JSON omits an empty message
    assert len(lines) == (LOG_LIMIT_MIB << 20) // steps.MIN_LINE_COST + 1
    assert set(lines[:-1]) == {""} and "log truncated" in lines[-1]


def test_build_options_are_bounded(server: Server) -> None:
    token, project = new_project(server, "o")
    huge = [{"tags": [f"registry.example/image:{i:06d}" + "x" * 200 for i in range(1500)]}]
    r = rpc(server, "depot.cli.v1.BuildService/CreateBuild", {"projectId": project, "options": huge}, token)
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted", r.text
    assert str(builds.MAX_OPTIONS_BYTES) in r.json()["message"]


def test_lists_and_usage_of_many_builds_do_not_load_their_options(server: Server) -> None:
    """300 builds with options near the 256 KiB bound; a 1,000-build ListBuilds page and the usage of their
    period read only the columns they answer with. Before, each loaded every build's options: 1,000 such
    builds took ~500 MB of a worker's memory for GetProjectUsage, and GetUsage has no page size."""
    token, project = new_project(server, "u")
    big = [{"tags": [f"t{i:03d}" + "x" * 1000 for i in range(250)]}]
    assert len(json.dumps(big)) < builds.MAX_OPTIONS_BYTES
    create = {"projectId": project, "options": big}

    def created(_: int) -> int:
        return rpc(server, "depot.cli.v1.BuildService/CreateBuild", create, token).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(created, range(300)))
    assert codes == [200] * 300
    assert server.process is not None
    workers = api_workers(server.process.pid)
    before = {p: peak_rss_bytes(p) for p in workers}
    period = {"startAt": "2000-01-01T00:00:00Z", "endAt": "2100-01-01T00:00:00Z"}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("depot.core.v1.BuildService/ListBuilds", {"projectId": project, "pageSize": 1000}),
        ("depot.cli.v1.BuildService/ListBuilds", {"projectId": project, "pageSize": 1000}),
        ("depot.core.v1.UsageService/GetProjectUsage", {"projectId": project, **period}),
        ("depot.core.v1.UsageService/GetUsage", period),
    ]
    for path, body in calls:
        r = rpc(server, path, body, token)
        assert r.status_code == 200, (path, r.text[:300])
    growth = {p: peak_rss_bytes(p) - before[p] for p in workers}
    assert all(g < 48 << 20 for g in growth.values()), growth


def test_build_timeout_ends_a_build_server_side(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "data", database_url=None, extra_args=["--build-timeout", "2"]).start()
    try:
        _org, token = srv.new_organization()
        project = rpc(srv, "depot.core.v1.ProjectService/CreateProject", {"name": "t"}, token).json()[
            "project"
        ]["projectId"]
        build = rpc(srv, "depot.build.v1.BuildService/CreateBuild", {"projectId": project}, token).json()
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            got = rpc(srv, "depot.core.v1.BuildService/GetBuild", {"buildId": build["buildId"]}, token).json()
            status = got["build"]["status"]
            if status != "STATUS_RUNNING":
                break
            time.sleep(0.5)
        assert status == "STATUS_ERROR", status
        # Its token ended with it (after the grace for the CLI's last calls), and it holds no builder.
        health = rpc(
            srv,
            "depot.cli.v1.BuildService/ReportBuildHealth",
            {"buildId": build["buildId"]},
            build["buildToken"],
        )
        assert health.status_code == 200, health.text
    finally:
        srv.stop()
