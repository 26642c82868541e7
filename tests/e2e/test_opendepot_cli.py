"""The user-facing `opendepot` commands (projects, builds) against a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_builds import build
from tests.support.builds import builds_possible, busybox_context
from tests.support.server import REPO, Server


def opendepot(
    server: Server, token: str, *args: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEPOT_API_URL": url or server.url, "DEPOT_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "opendepot.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def data(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_projects_commands(server: Server, org: tuple[str, str]) -> None:
    _org, token = org
    created = data(
        opendepot(
            server,
            token,
            "projects",
            "create",
            "from-cli",
            "--cache-gb",
            "20",
            "--hardware",
            "8x16",
            "--json",
        )
    )
    pid = created["projectId"]
    assert created["cachePolicy"]["keepGb"] == 20 and created["hardware"] == "HARDWARE_8X16"
    table = opendepot(server, token, "projects", "list")
    assert table.returncode == 0 and pid in table.stdout and "from-cli" in table.stdout
    assert [p["projectId"] for p in data(opendepot(server, token, "projects", "list", "--json"))] == [pid]
    updated = data(opendepot(server, token, "projects", "update", pid, "--name", "renamed", "--json"))
    assert updated["name"] == "renamed" and updated["cachePolicy"]["keepGb"] == 20
    assert data(opendepot(server, token, "projects", "get", pid, "--json"))["name"] == "renamed"
    assert data(opendepot(server, token, "projects", "reset", pid, "--json")) == {"reset": pid}
    assert data(opendepot(server, token, "projects", "delete", pid, "--json")) == {"deleted": pid}

    missing = opendepot(server, token, "projects", "get", pid)
    assert missing.returncode == 1 and missing.stderr.startswith("opendepot: not_found:")
    assert "Traceback" not in missing.stderr
    bad = opendepot(server, "odo_nope", "projects", "list")
    assert bad.returncode == 1 and "unauthenticated" in bad.stderr and "Traceback" not in bad.stderr
    away = opendepot(server, token, "projects", "list", url="http://127.0.0.1:9")
    assert away.returncode == 1 and "unavailable" in away.stderr and "Traceback" not in away.stderr


@pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
def test_builds_commands(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    pid = data(opendepot(server, token, "projects", "create", "cli-builds", "--json"))["projectId"]
    code, output = build(server, token, pid, busybox_context(tmp_path / "ctx", "echo one; echo two"))
    assert code == 0, output
    [listed] = data(opendepot(server, token, "builds", "list", pid, "--json"))
    assert listed["status"] == "STATUS_SUCCESS"
    got = data(opendepot(server, token, "builds", "get", listed["buildId"], "--json"))
    assert got["buildId"] == listed["buildId"]
    steps = data(opendepot(server, token, "builds", "steps", pid, listed["buildId"], "--json"))
    [run] = [s for s in steps if " RUN " in s["name"]]
    logs = opendepot(server, token, "builds", "logs", pid, listed["buildId"], run["digest"], "--follow")
    assert logs.returncode == 0 and logs.stdout.splitlines() == ["one", "two"]
    table = opendepot(server, token, "builds", "steps", pid, listed["buildId"])
    assert table.returncode == 0 and "RUN" in table.stdout


def test_tokens_and_trust_policy_commands(server: Server, org: tuple[str, str]) -> None:
    _org, token = org
    pid = data(opendepot(server, token, "projects", "create", "guarded", "--json"))["projectId"]
    created = data(
        opendepot(server, token, "tokens", "create", "--project", pid, "--description", "ci", "--json")
    )
    assert created["secret"].startswith("odp_")
    assert data(opendepot(server, token, "tokens", "list", pid, "--json")) == [
        {"tokenId": created["tokenId"], "description": "ci"}
    ]
    assert data(
        opendepot(server, token, "tokens", "update", created["tokenId"], "--description", "ci-2", "--json")
    ) == {"updated": created["tokenId"]}
    # The new project token works, and deleting it revokes it.
    assert opendepot(server, created["secret"], "projects", "get", pid).returncode == 0
    assert data(opendepot(server, token, "tokens", "delete", created["tokenId"], "--json")) == {
        "deleted": created["tokenId"]
    }
    revoked = opendepot(server, created["secret"], "projects", "get", pid)
    assert revoked.returncode == 1 and "unauthenticated" in revoked.stderr

    github = data(opendepot(server, token, "trust-policies", "add", pid, "--github", "acme/web", "--json"))
    assert github["github"] == {"repositoryOwner": "acme", "repository": "web"}
    listed = opendepot(server, token, "trust-policies", "list", pid)
    assert listed.returncode == 0 and "acme/web" in listed.stdout
    bad = opendepot(server, token, "trust-policies", "add", pid, "--circleci", "not-a-uuid/x")
    assert bad.returncode == 1 and "invalid_argument" in bad.stderr and "circleci" in bad.stderr
    assert data(
        opendepot(server, token, "trust-policies", "remove", pid, github["trustPolicyId"], "--json")
    ) == {"removed": github["trustPolicyId"]}
    assert data(opendepot(server, token, "trust-policies", "list", pid, "--json")) == []
    # The admin form still works on the store.
    assert server.admin("tokens", "create", "--org", _org).startswith("odo_")

    gitlab = data(
        opendepot(server, token, "trust-policies", "add", pid, "--gitlab", "acme/platform/web", "--json")
    )
    assert gitlab["gitlab"] == {"namespacePath": "acme/platform", "projectPath": "acme/platform/web"}
    assert "acme/platform/web" in opendepot(server, token, "trust-policies", "list", pid).stdout


@pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
def test_build_images_and_usage_commands(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    pid = data(opendepot(server, token, "projects", "create", "cli-build", "--json"))["projectId"]
    context = busybox_context(tmp_path / "ctx", "echo built-by-opendepot")
    built = opendepot(server, token, "build", str(context), "--project", pid, "--save-tag", "v1")
    assert built.returncode == 0, built.stderr
    # rich progress on stderr: each step once it ends, its output beneath, then what was saved.
    assert "RUN" in built.stderr and "built-by-opendepot" in built.stderr, built.stderr
    assert f"saved {server.registry_host}/{pid}:v1" in built.stderr
    [listed] = data(opendepot(server, token, "builds", "list", pid, "--json"))
    assert listed["status"] == "STATUS_SUCCESS"
    again = opendepot(server, token, "build", str(context), "--project", pid)
    assert again.returncode == 0 and "CACHED" in again.stderr, again.stderr

    failing = busybox_context(tmp_path / "bad", "exit 3")
    failed = opendepot(server, token, "build", str(failing), "--project", pid)
    assert failed.returncode != 0
    statuses = sorted(b["status"] for b in data(opendepot(server, token, "builds", "list", pid, "--json")))
    assert statuses == ["STATUS_FAILED", "STATUS_SUCCESS", "STATUS_SUCCESS"]

    def tags() -> set[str]:
        return {i["tag"] for i in data(opendepot(server, token, "images", "list", pid, "--json"))}

    deadline = time.monotonic() + 20
    while tags() != {listed["buildId"], "v1"} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tags() == {listed["buildId"], "v1"}
    assert "v1" in opendepot(server, token, "images", "list", pid).stdout
    assert data(opendepot(server, token, "images", "delete", pid, "v1", "--json")) == {"deleted": ["v1"]}
    assert tags() == {listed["buildId"]}
    missing = opendepot(server, token, "images", "delete", pid, "v1")
    assert missing.returncode == 1 and "not_found" in missing.stderr

    now = datetime.now(UTC)
    window = [
        "--from",
        (now - timedelta(hours=1)).isoformat(),
        "--to",
        (now + timedelta(hours=1)).isoformat(),
    ]
    [mine] = data(opendepot(server, token, "usage", *window, "--project", pid, "--json"))
    assert mine["projectId"] == pid and mine["buildCount"] == 3
    everyone = data(opendepot(server, token, "usage", *window, "--json"))
    assert [u["buildCount"] for u in everyone if u["projectId"] == pid] == [3]
    bad = opendepot(server, token, "usage", "--from", "yesterday", "--to", "today")
    assert bad.returncode == 1 and "invalid_argument" in bad.stderr
