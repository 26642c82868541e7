"""The official `depot` CLI binary (2.102.12), unmodified, over h2c: project commands and cache reset."""

from __future__ import annotations

import json

import pytest

from tests.support.clients import clients_installed, depot
from tests.support.server import Server

pytestmark = pytest.mark.skipif(not clients_installed(), reason="run `make setup` to install the clients")
GIB = 1 << 30


def test_projects_create_list_get_update_delete(server: Server, org: tuple[str, str]) -> None:
    org_id, token = org
    created = depot(server.url, token, "projects", "create", "cli-project")
    assert created.returncode == 0, created.stderr
    project = json.loads(created.stdout)
    pid = project["project_id"]
    # The CLI sends keep_bytes = GB * 2^30 and keep_days, and prints what came back.
    assert project == {
        "project_id": pid,
        "name": "cli-project",
        "cache_policy": {"keep_bytes": 50 * GIB, "keep_days": 14},
    }

    listed = depot(server.url, token, "projects", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"id": pid, "name": "cli-project"}]

    got = depot(server.url, token, "projects", "get", pid, "--output", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["organization_id"] == org_id

    updated = depot(
        server.url,
        token,
        "projects",
        "update",
        pid,
        "--name",
        "renamed",
        "--region",
        "eu-central-1",
        "--cache-storage-policy",
        "75",
        "--output",
        "json",
    )
    assert updated.returncode == 0, updated.stderr
    after = json.loads(updated.stdout)
    assert (after["name"], after["region_id"]) == ("renamed", "eu-central-1")
    # The size changed and keep_days survived (the CLI reads it first with GetProject).
    assert after["cache_policy"] == {"keep_bytes": 75 * GIB, "keep_days": 14}

    bad_region = depot(server.url, token, "projects", "update", pid, "--region", "mars-1")
    assert bad_region.returncode != 0
    assert "invalid_argument" in bad_region.stderr and "region_id" in bad_region.stderr

    deleted = depot(server.url, token, "projects", "delete", "--project-id", pid, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted project {pid}" in deleted.stdout
    gone = depot(server.url, token, "projects", "get", pid)
    assert gone.returncode != 0 and "not_found" in gone.stderr


def test_cache_reset_deletes_the_project_cache(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    pid = json.loads(depot(server.url, token, "projects", "create", "cached").stdout)["project_id"]
    # Stand-in cache contents in the project's cache directory (builders write here).
    state = server.data_dir / "projects" / pid / "amd64"
    state.mkdir(parents=True)
    (state / "layer").write_bytes(b"x" * 1024)

    reset = depot(server.url, token, "cache", "reset", "--project", pid)
    assert reset.returncode == 0, reset.stderr
    assert "Cache reset for cached" in reset.stdout
    assert not (server.data_dir / "projects" / pid).exists()
    # The project is still usable.
    assert depot(server.url, token, "projects", "get", pid).returncode == 0


def test_cli_reports_auth_errors(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    pid = json.loads(depot(server.url, token, "projects", "create", "private").stdout)["project_id"]
    _other, other_token = server.new_organization()

    unknown = depot(server.url, "odo_not-a-real-token", "projects", "list")
    assert unknown.returncode != 0 and "unauthenticated" in unknown.stderr

    foreign = depot(server.url, other_token, "projects", "get", pid)
    assert foreign.returncode != 0 and "permission_denied" in foreign.stderr

    foreign_reset = depot(server.url, other_token, "cache", "reset", "--project", pid)
    assert foreign_reset.returncode != 0 and "permission_denied" in foreign_reset.stderr
