"""depot-go (the official Go SDK, v0.5.1), unmodified: tests/e2e/go builds a Dockerfile with NewBuild,
machine.Acquire, Connect, a BuildKit solve and Finish, against opendepot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_builds import builds_of, new_project
from tests.support.builds import builds_possible, busybox_context
from tests.support.server import Server

GO_PROGRAM = Path(__file__).parent / "go"
pytestmark = [
    pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible())),
    pytest.mark.skipif(
        shutil.which("go") is None, reason="the Go toolchain is needed to build the depot-go program"
    ),
]


@pytest.fixture(scope="session")
def depotgo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("depotgo") / "depotgo"
    result = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=GO_PROGRAM,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return binary


def run(
    depotgo: Path, server: Server, token: str, project: str, context: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEPOT_API_URL": server.url, "DEPOT_TOKEN": token, "DEPOT_PROJECT_ID": project}
    return subprocess.run(
        [str(depotgo), str(context)], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_depot_go_builds_and_rebuilds_from_cache(
    depotgo: Path, server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    project = new_project(server, token, "depot-go")
    context = busybox_context(tmp_path / "ctx", "echo from-depot-go > /f", "cat /f")
    first = run(depotgo, server, token, project, context)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [line for line in first.stdout.splitlines() if " RUN " in line] == [
        'step done [2/3] RUN ["/bin/busybox", "sh", "-c", "echo from-depot-go > /f"]',
        'step done [3/3] RUN ["/bin/busybox", "sh", "-c", "cat /f"]',
    ]
    second = run(depotgo, server, token, project, context)
    assert second.returncode == 0, second.stderr
    assert all(line.startswith("step cached") for line in second.stdout.splitlines() if " RUN " in line)
    ids = [
        line.split()[1]
        for out in (first.stdout, second.stdout)
        for line in out.splitlines()
        if line.startswith("build ")
    ]
    listed = builds_of(server, token, project)
    assert [b["id"] for b in listed] == ids[::-1]
    assert {b["status"] for b in listed} == {"finished"}


def test_depot_go_failure_is_recorded(
    depotgo: Path, server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    project = new_project(server, token, "depot-go-fails")
    result = run(depotgo, server, token, project, busybox_context(tmp_path / "ctx", "exit 7"))
    assert result.returncode != 0 and "exit code: 7" in result.stderr
    assert [b["status"] for b in builds_of(server, token, project)] == ["failed"]
