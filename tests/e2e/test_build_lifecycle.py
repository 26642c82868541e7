"""Leases, heartbeats and builder lifecycle: one server with a short lease timeout, one with the default."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
from protobuf import Oneof

from opendepot.builders import queries as machine_queries
from opendepot.builds import queries as build_queries
from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.gen.moby.buildkit.v1 import control_pb
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from tests.e2e.test_builds import build, new_project, step_states
from tests.support.builds import buildctl_via_gateway, builds_possible, busybox_context
from tests.support.clients import depot, sdk_node
from tests.support.rpc import call
from tests.support.server import Server

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
BS = "depot.cli.v1.BuildService"
LEASE_TIMEOUT = 3.0
SUCCESS: Oneof[Literal["success"], cli.FinishBuildRequest.BuildSuccess] = Oneof(
    "success", cli.FinishBuildRequest.BuildSuccess()
)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default lease timeout: the CLI heart-beats every 5 s, so a shorter lease would expire mid-build."""
    root = tmp_path_factory.mktemp("lifecycle-default")
    srv = Server(
        data_dir=root / "data", database_url=None, extra_args=["--builder-idle-timeout", "60"]
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A 3 s lease, for the test that sends its own heartbeats twice a second."""
    root = tmp_path_factory.mktemp("lifecycle")
    srv = Server(
        data_dir=root / "data",
        database_url=None,
        extra_args=["--lease-timeout", str(LEASE_TIMEOUT), "--builder-idle-timeout", "60"],
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def finish(http: httpx.Client, srv: Server, build_id: str, build_token: str) -> None:
    """FinishBuild with success, as the CLI sends it at the end of a build."""
    done = call(
        http,
        srv.url,
        f"{BS}/FinishBuild",
        cli.FinishBuildRequest(build_id=build_id, result=SUCCESS),
        build_token,
    )
    assert done.status == 200, done.body


def connect(http: httpx.Client, srv: Server, build_id: str, token: str) -> cli.GetBuildKitConnectionResponse:
    """Polls GetBuildKitConnection as the CLI does until the builder is active."""
    request = cli.GetBuildKitConnectionRequest(build_id=build_id, platform=cli.BuilderPlatform.AMD64)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = call(http, srv.url, f"{BS}/GetBuildKitConnection", request, token)
        response = reply.message(cli.GetBuildKitConnectionResponse)
        assert response.connection is not None
        if response.connection.field == "active":
            return response
        assert response.connection.value.wait_ms > 0
        time.sleep(response.connection.value.wait_ms / 1000)
    raise AssertionError("builder never became active")


def status_of(http: httpx.Client, srv: Server, project: str, build_id: str, token: str) -> cli.BuildStatus:
    reply = call(http, srv.url, f"{BS}/ListBuilds", cli.ListBuildsRequest(project_id=project), token)
    return next(b.status for b in reply.message(cli.ListBuildsResponse).builds if b.id == build_id)


def test_heartbeats_hold_the_lease_and_silence_releases_it(short: Server) -> None:
    token = short.admin_token
    project = new_project(short, token, "leases")
    with httpx.Client(timeout=30) as http:

        def create() -> tuple[str, str]:
            r = call(http, short.url, f"{BS}/CreateBuild", cli.CreateBuildRequest(project_id=project), token)
            created = r.message(cli.CreateBuildResponse)
            assert created.project_id == project and created.build_url.endswith(created.build_id)
            return created.build_id, created.build_token

        kept, kept_token = create()
        silent, silent_token = create()
        active = connect(http, short, kept, kept_token)
        connection = active.connection
        assert connection is not None and connection.field == "active"
        details = connection.value
        assert details.cert is not None and details.ca_cert is not None
        assert details.endpoint == f"tcp://127.0.0.1:{short.buildkit_port}"
        assert "BEGIN CERTIFICATE" in details.cert.cert and "PRIVATE KEY" in details.cert.key
        assert "BEGIN CERTIFICATE" in details.ca_cert.cert and details.server_name.startswith(project)
        connect(http, short, silent, silent_token)

        # The first beat comes right away: under load the silent build's connect can take a second or more.
        deadline = time.monotonic() + LEASE_TIMEOUT * 2.5
        while time.monotonic() < deadline:
            beat = call(
                http,
                short.url,
                f"{BS}/ReportBuildHealth",
                cli.ReportBuildHealthRequest(build_id=kept, platform=cli.BuilderPlatform.AMD64),
                kept_token,
            )
            # cancels_at stays unset unless the build is being cancelled.
            assert beat.status == 200 and beat.body == b""
            time.sleep(0.5)

        assert status_of(http, short, project, kept, token) == cli.BuildStatus.RUNNING
        assert status_of(http, short, project, silent, token) == cli.BuildStatus.FAILED
        refused = call(
            http,
            short.url,
            f"{BS}/GetBuildKitConnection",
            cli.GetBuildKitConnectionRequest(build_id=silent, platform=cli.BuilderPlatform.AMD64),
            silent_token,
        )
        assert refused.code == "failed_precondition"
        # A heartbeat for a finished build is answered harmlessly (the CLI keeps beating after FinishBuild).
        late = call(
            http,
            short.url,
            f"{BS}/ReportBuildHealth",
            cli.ReportBuildHealthRequest(build_id=silent, platform=cli.BuilderPlatform.AMD64),
            silent_token,
        )
        assert late.status == 200

        finish(http, short, kept, kept_token)
        assert status_of(http, short, project, kept, token) == cli.BuildStatus.FINISHED


def builder_pids(srv: Server, project: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"buildkitd" in cmdline and f"{project}-amd64.toml".encode() in cmdline:
                pids.append(int(proc.name))
    return pids


def test_killed_builder_restarts_with_its_cache_and_reset_empties_it(
    lifecycle: Server, tmp_path: Path
) -> None:
    token = lifecycle.admin_token
    project = new_project(lifecycle, token, "lifecycle")
    context = busybox_context(tmp_path / "ctx", "echo first > /a", "cat /a")
    code, output = build(lifecycle, token, project, context)
    assert code == 0, output
    [pid] = builder_pids(lifecycle, project)
    os.kill(pid, signal.SIGKILL)

    code, output = build(lifecycle, token, project, context)
    assert code == 0, output
    assert set(step_states(output).values()) == {"CACHED"}, step_states(output)
    assert builder_pids(lifecycle, project) and builder_pids(lifecycle, project) != [pid]

    [reset] = sdk_node(
        lifecycle.url,
        [
            {
                "service": "core.v1.ProjectService",
                "method": "resetProject",
                "token": token,
                "request": {"projectId": project},
            }
        ],
    )
    assert reset == {"ok": {}}
    assert builder_pids(lifecycle, project) == []
    assert not (lifecycle.data_dir / "projects" / project).exists()
    code, output = build(lifecycle, token, project, context)
    assert code == 0, output
    assert set(step_states(output).values()) == {"DONE"}, step_states(output)

    # Deleting the project stops its builder and forgets it (its row used to stay for good).
    assert recorded_builders(lifecycle, project) == ["amd64"]
    deleted = depot(lifecycle.url, token, "projects", "delete", "--project-id", project, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert builder_pids(lifecycle, project) == []
    assert recorded_builders(lifecycle, project) == []


def recorded_builders(srv: Server, project: str) -> list[str]:
    """The platforms the server records a builder of the project for (its machines table)."""
    store = Store(sqlite_url(srv.data_dir))
    try:
        return sorted(m.platform for m in store.read_now(lambda s: machine_queries.of_project(s, project)))
    finally:
        store.dispose()


def cgroup_file(pid: int, controller: str, name: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/") / name
    raise AssertionError(f"no {controller} cgroup for {pid}")


@pytest.mark.skipif(
    not Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() or not os.access("/sys/fs/cgroup/cpu", os.W_OK),
    reason="needs writable cgroup v1 cpu and memory",
)
def test_hardware_size_limits_the_builder(lifecycle: Server, tmp_path: Path) -> None:
    token = lifecycle.admin_token
    [created] = sdk_node(
        lifecycle.url,
        [
            {
                "service": "core.v1.ProjectService",
                "method": "createProject",
                "token": token,
                "request": {"name": "small", "hardware": 2},
            }
        ],
    )
    project = created["ok"]["project"]["projectId"]
    assert created["ok"]["project"]["hardware"] == "HARDWARE_4X4"
    code, output = build(lifecycle, token, project, busybox_context(tmp_path / "ctx", "echo limited"))
    assert code == 0, output
    [pid] = builder_pids(lifecycle, project)
    quota = int(cgroup_file(pid, "cpu", "cpu.cfs_quota_us").read_text())
    period = int(cgroup_file(pid, "cpu", "cpu.cfs_period_us").read_text())
    assert quota / period == 4
    assert int(cgroup_file(pid, "memory", "memory.limit_in_bytes").read_text()) == 4 << 30
    config = (lifecycle.data_dir / "run" / f"{project}-amd64.toml").read_text()
    if 'networkMode = "bridge"' in config:
        # Sandboxed (rootless): no per-step cgroups; the builder's own groups, joined before exec, cover them.
        assert f"/{project}-amd64/" in str(cgroup_file(pid, "memory", "x"))
    else:
        assert f"/opendepot/{project}-amd64" in config and "defaultCgroupParent" in config


def test_stopping_the_server_stops_its_builders_and_keeps_caches(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "data", database_url=None).start()
    token = srv.admin_token
    project = new_project(srv, token, "restart")
    context = busybox_context(tmp_path / "ctx", "echo survives > /s")
    try:
        code, output = build(srv, token, project, context)
        assert code == 0, output
        assert builder_pids(srv, project)
    finally:
        srv.stop()
    assert builder_pids(srv, project) == []
    again = Server(data_dir=tmp_path / "data", database_url=None).start()
    try:
        code, output = build(again, token, project, context)
        assert code == 0, output
        assert set(step_states(output).values()) == {"CACHED"}
    finally:
        again.stop()
    assert builder_pids(again, project) == []


def test_buildkit_v1_endpoint_health_and_release_through_sdk_node(lifecycle: Server) -> None:
    """The low-level sdk-node path (spec §5.10): GetEndpoint streams pending until one active, ReportHealth
    streams heartbeats, ReleaseEndpoint releases; then build.v1 FinishBuild."""
    token = lifecycle.admin_token
    project = new_project(lifecycle, token, "buildkit-v1")
    [created] = sdk_node(
        lifecycle.url,
        [
            {
                "service": "build.v1.BuildService",
                "method": "createBuild",
                "token": token,
                "request": {"projectId": project},
            }
        ],
    )
    build_id, build_token = created["ok"]["buildId"], created["ok"]["buildToken"]
    endpoint, health, release, finish = sdk_node(
        lifecycle.url,
        [
            {
                "service": "buildkit.v1.BuildKitService",
                "method": "getEndpoint",
                "token": build_token,
                "request": {"buildId": build_id, "platform": 1},
            },
            {
                "service": "buildkit.v1.BuildKitService",
                "method": "reportHealth",
                "token": build_token,
                "requests": [{"buildId": build_id, "platform": 1}, {"buildId": build_id, "platform": 1}],
            },
            {
                "service": "buildkit.v1.BuildKitService",
                "method": "releaseEndpoint",
                "token": build_token,
                "request": {"buildId": build_id, "platform": 1},
            },
            {
                "service": "build.v1.BuildService",
                "method": "finishBuild",
                "token": build_token,
                "request": {"buildId": build_id, "result": {"case": "success", "value": {}}},
            },
        ],
    )
    messages = endpoint["ok"]
    assert all("pending" in m for m in messages[:-1])
    active = messages[-1]["active"]
    assert active["endpoint"] == f"tcp://127.0.0.1:{lifecycle.buildkit_port}"
    assert active["serverName"].startswith(project)
    assert (
        "BEGIN CERTIFICATE" in active["cert"]["cert"]["cert"]
        and "PRIVATE KEY" in active["cert"]["key"]["key"]
    )
    assert "BEGIN CERTIFICATE" in active["caCert"]["cert"]
    assert health == {"ok": {}} and release == {"ok": {}} and finish == {"ok": {}}
    with httpx.Client(timeout=30) as http:
        assert status_of(http, lifecycle, project, build_id, token) == cli.BuildStatus.FINISHED


def test_status_reports_are_kept_and_finished_builds_lose_the_gateway(
    lifecycle: Server, tmp_path: Path
) -> None:
    token = lifecycle.admin_token
    project = new_project(lifecycle, token, "gateway")
    code, output = build(lifecycle, token, project, busybox_context(tmp_path / "ctx", "echo reported"))
    assert code == 0, output
    store = Store(sqlite_url(lifecycle.data_dir))
    try:
        [built] = store.read_now(lambda s: build_queries.newest_first(s, project, limit=5, after=None))
        reports = store.read_now(lambda s: build_queries.status_reports(s, built.id))
    finally:
        store.dispose()
    names = {v.name for r in reports for v in control_pb.StatusResponse.from_binary(r.payload).vertexes}
    assert "[depot] launching amd64 machine" in names, names

    with httpx.Client(timeout=30) as http:
        r = call(http, lifecycle.url, f"{BS}/CreateBuild", cli.CreateBuildRequest(project_id=project), token)
        created = r.message(cli.CreateBuildResponse)
        connection = connect(http, lifecycle, created.build_id, created.build_token).connection
        assert connection is not None
        details = connection.value
        assert isinstance(details, cli.GetBuildKitConnectionResponse.ActiveConnection)
        assert details.cert is not None and details.ca_cert is not None
        buildctl = [*buildctl_via_gateway(details, tmp_path / "certs"), "--timeout", "5", "debug", "workers"]
        during = subprocess.run(buildctl, capture_output=True, text=True, timeout=60, check=False)
        assert during.returncode == 0, during.stderr
        finish(http, lifecycle, created.build_id, created.build_token)
        after = subprocess.run(buildctl, capture_output=True, text=True, timeout=60, check=False)
        assert after.returncode != 0
