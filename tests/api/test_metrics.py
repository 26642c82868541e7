"""GET /metrics on a running `opendepot serve` with several API workers: the samples of every worker and of
the supervisor, in Prometheus' text format."""

from __future__ import annotations

import re
import time

import httpx

from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.gen.depot.core.v1 import project_pb as pb
from tests.support.rpc import call
from tests.support.server import Server


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_rpcs_by_method_and_code_and_builds_by_status(
    server: Server, http: httpx.Client
) -> None:
    _org, token = server.new_organization()
    created = call(
        http,
        server.url,
        "depot.core.v1.ProjectService/CreateProject",
        pb.CreateProjectRequest(name="m"),
        token,
    )
    project = created.message(pb.CreateProjectResponse).project
    assert project is not None
    method = "depot.cli.v1.BuildService/CreateBuild"
    before = sample(
        http.get(f"{server.url}/metrics").text, "opendepot_rpc_requests_total", method=method, code="ok"
    )
    calls = 6  # over keep-alive and new connections alike, so that more than one worker answers
    for _ in range(calls):
        request = cli.CreateBuildRequest(project_id=project.project_id)
        with httpx.Client(timeout=30) as fresh:
            assert call(fresh, server.url, f"/{method}", request, token).status == 200
    denied = call(
        http, server.url, f"/{method}", cli.CreateBuildRequest(project_id=project.project_id), "bad"
    )
    assert denied.status == 401

    response = http.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    after = sample(text, "opendepot_rpc_requests_total", method=method, code="ok")
    assert after is not None and after - (before or 0) == calls
    assert sample(text, "opendepot_rpc_requests_total", method=method, code="unauthenticated") is not None
    count = sample(text, "opendepot_rpc_duration_seconds_count", method=method)
    assert count is not None and count >= calls

    # The supervisor's gauges, set from the store every few seconds.
    def running_builds() -> float:
        return sample(http.get(f"{server.url}/metrics").text, "opendepot_builds", status="running") or 0

    deadline = time.monotonic() + 20
    while running_builds() < calls:
        assert time.monotonic() < deadline, "opendepot_builds{status=running} never counted the new builds"
        time.sleep(0.5)
    assert sample(http.get(f"{server.url}/metrics").text, "opendepot_leases") is not None
