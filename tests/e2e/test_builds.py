"""`depot build` from the official CLI against `opendepot serve`, on stock buildkitd behind the mTLS gateway:
real RUN steps, a persistent cache per project, isolation between projects, failures recorded, and the
build.v1 -> CLI hand-off through DEPOT_BUILD_ID."""

from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import pytest

from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import depot, sdk_node, sdk_one
from tests.support.server import Server

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))


def new_project(server: Server, token: str, name: str) -> str:
    created = depot(server.url, token, "projects", "create", name)
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["project_id"])


def new_project_token(server: Server, token: str, project: str, description: str = "ci") -> str:
    """A project token for the project (CreateToken through @depot/sdk-node): its secret."""
    created = sdk_one(
        server.url,
        "core.v1.ProjectService",
        "createToken",
        {"projectId": project, "description": description},
        token,
    )
    assert "ok" in created, created
    return str(created["ok"]["secret"])


def build(
    server: Server,
    token: str | None,
    project: str,
    context: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    result = depot(
        server.url,
        token,
        "build",
        "--project",
        project,
        "--progress",
        "plain",
        *extra,
        str(context),
        env=env,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def step_states(output: str) -> dict[str, str]:
    """For each RUN step of the plain progress output: CACHED or DONE."""
    names: dict[str, str] = {}
    states: dict[str, str] = {}
    for line in output.splitlines():
        if m := re.match(r"^#(\d+) \[\d+/\d+\] (RUN .*)$", line):
            names[m[1]] = m[2]
        elif (m := re.match(r"^#(\d+) (CACHED|DONE)", line)) and m[1] in names:
            states[names[m[1]]] = m[2]
    return states


def builds_of(server: Server, token: str, project: str) -> list[dict[str, str]]:
    listed = depot(server.url, token, "list", "builds", "--project", project, "--output", "json")
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, str]] = json.loads(listed.stdout)
    return result


def test_build_cache_is_persistent_and_per_project(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    context = busybox_context(tmp_path / "ctx", "echo hello-from-run > /greeting", "cat /greeting")
    first_project, second_project = new_project(server, token, "one"), new_project(server, token, "two")

    code, first = build(
        server, token, first_project, context, "--output", f"type=local,dest={tmp_path / 'out1'}"
    )
    assert code == 0, first
    assert "hello-from-run" in first
    assert set(step_states(first).values()) == {"DONE"}, step_states(first)

    code, again = build(
        server, token, first_project, context, "--output", f"type=local,dest={tmp_path / 'out2'}"
    )
    assert code == 0, again
    states = step_states(again)
    assert len(states) == 2 and set(states.values()) == {"CACHED"}, states
    comparison = filecmp.dircmp(tmp_path / "out1", tmp_path / "out2")
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    assert (tmp_path / "out2" / "greeting").read_text() == "hello-from-run\n"
    assert filecmp.cmp(
        tmp_path / "out1" / "bin" / "busybox", tmp_path / "out2" / "bin" / "busybox", shallow=False
    )

    # Another project never sees that cache.
    code, elsewhere = build(server, token, second_project, context)
    assert code == 0, elsewhere
    assert set(step_states(elsewhere).values()) == {"DONE"}, step_states(elsewhere)

    listed = builds_of(server, token, first_project)
    assert [b["status"] for b in listed] == ["finished", "finished"]


def test_failing_step_fails_the_build(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    project = new_project(server, token, "failing")
    context = busybox_context(tmp_path / "ctx", "echo about-to-fail", "exit 3")
    code, output = build(server, token, project, context)
    assert code != 0
    assert "exit code: 3" in output
    assert [b["status"] for b in builds_of(server, token, project)] == ["failed"]


def test_project_token_builds_only_in_its_project(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    mine, theirs = new_project(server, token, "mine"), new_project(server, token, "theirs")
    [created] = sdk_node(
        server.url,
        [
            {
                "service": "core.v1.ProjectService",
                "method": "createToken",
                "token": token,
                "request": {"projectId": mine, "description": "ci"},
            }
        ],
    )
    project_token = created["ok"]["secret"]
    context = busybox_context(tmp_path / "ctx", "echo ok")
    code, output = build(server, project_token, theirs, context)
    assert code != 0 and "permission_denied" in output
    code, output = build(server, project_token, mine, context)
    assert code == 0, output


def test_build_id_handoff_from_sdk_node_to_the_cli(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    """spec §5.10: build.v1 CreateBuild with an org token, then the CLI with DEPOT_BUILD_ID and its token."""
    _org, token = org
    project = new_project(server, token, "handoff")
    [created] = sdk_node(
        server.url,
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
    assert build_token.startswith("odb_")
    context = busybox_context(tmp_path / "ctx", "echo handed-off")
    result = depot(
        server.url,
        build_token,
        "build",
        "--progress",
        "plain",
        str(context),
        timeout=300,
        env={"DEPOT_BUILD_ID": build_id, "DEPOT_PROJECT_ID": project},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handed-off" in result.stdout + result.stderr
    listed = builds_of(server, token, project)
    assert [(b["id"], b["status"]) for b in listed] == [(build_id, "finished")]
    # The build token reaches its build only.
    other = depot(server.url, build_token, "projects", "get", project)
    assert other.returncode != 0 and "permission_denied" in other.stderr
