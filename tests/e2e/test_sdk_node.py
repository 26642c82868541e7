"""@depot/sdk-node 1.4.0, unmodified, over h2c against a running opendepot: every ProjectService and
OrganizationService method, with the presence and error rules that the clients depend on."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.clients import clients_installed, sdk_node
from tests.support.server import Server

pytestmark = pytest.mark.skipif(not clients_installed(), reason="run `make setup` to install the clients")

PROJECTS = "core.v1.ProjectService"
GIB = 1 << 30


def ok(outcome: dict[str, Any]) -> dict[str, Any]:
    assert "ok" in outcome, outcome
    result: dict[str, Any] = outcome["ok"]
    return result


def call(service: str, method: str, token: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"service": service, "method": method, "token": token, "request": request or {}}


def test_project_lifecycle_through_sdk_node(server: Server, org: tuple[str, str]) -> None:
    org_id, token = org
    created = sdk_node(
        server.url,
        [
            call(
                PROJECTS,
                "createProject",
                token,
                {
                    "name": "web",
                    "regionId": "eu-central-1",
                    "cachePolicy": {"keepGb": 20, "keepDays": 7},
                    "hardware": 3,
                },
            ),
            call(PROJECTS, "createProject", token, {"name": "api"}),
        ],
    )
    web = ok(created[0])["project"]
    api = ok(created[1])["project"]
    assert web["organizationId"] == org_id
    assert web["regionId"] == "eu-central-1"
    assert web["cachePolicy"] == {"keepBytes": str(20 * GIB), "keepGb": 20, "keepDays": 7}
    assert web["hardware"] == "HARDWARE_8X8"
    # Defaults as the CLI assumes them: us-east-1, 50 GB, 14 days, 16x32.
    assert api["regionId"] == "us-east-1"
    assert api["cachePolicy"] == {"keepBytes": str(50 * GIB), "keepGb": 50, "keepDays": 14}
    assert api["hardware"] == "HARDWARE_16X32"
    assert len(web["projectId"]) == 10

    results = sdk_node(
        server.url,
        [
            call(PROJECTS, "listProjects", token),
            call(PROJECTS, "getProject", token, {"projectId": web["projectId"]}),
            # Only present fields change: the name alone.
            call(PROJECTS, "updateProject", token, {"projectId": web["projectId"], "name": "web2"}),
            # keep_bytes alone (as the CLI sends it) sets the size.
            call(
                PROJECTS,
                "updateProject",
                token,
                {
                    "projectId": api["projectId"],
                    "cachePolicy": {"keepBytes": f"bigint:{30 * GIB}", "keepDays": 3},
                },
            ),
            call(PROJECTS, "resetProject", token, {"projectId": api["projectId"]}),
            call(PROJECTS, "deleteProject", token, {"projectId": web["projectId"]}),
            call(PROJECTS, "getProject", token, {"projectId": web["projectId"]}),
            call(PROJECTS, "listProjects", token),
            call("core.v1.OrganizationService", "listOrganizations", token),
        ],
    )
    listed = ok(results[0])["projects"]
    assert [p["projectId"] for p in listed] == [web["projectId"], api["projectId"]]
    assert ok(results[1])["project"] == web
    renamed = ok(results[2])["project"]
    assert renamed == {**web, "name": "web2"}
    resized = ok(results[3])["project"]
    assert resized["cachePolicy"] == {"keepBytes": str(30 * GIB), "keepGb": 30, "keepDays": 3}
    assert resized["regionId"] == "us-east-1"
    assert ok(results[4]) == {}
    assert ok(results[5]) == {}
    assert results[6]["error"]["code"] == "not_found"
    assert [p["projectId"] for p in ok(results[7])["projects"]] == [api["projectId"]]
    orgs = ok(results[8])["organizations"]
    assert [(o["orgId"], o["name"]) for o in orgs] == [(org_id, orgs[0]["name"])]
    assert orgs[0]["createdAt"].endswith("Z")


def test_tokens_and_trust_policies_through_sdk_node(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    project = ok(sdk_node(server.url, [call(PROJECTS, "createProject", token, {"name": "tp"})])[0])["project"]
    pid = project["projectId"]
    results = sdk_node(
        server.url,
        [
            call(PROJECTS, "createToken", token, {"projectId": pid, "description": "ci"}),
            call(
                PROJECTS,
                "addTrustPolicy",
                token,
                {
                    "projectId": pid,
                    "provider": {
                        "case": "github",
                        "value": {"repositoryOwner": "acme", "repository": "acme/web"},
                    },
                },
            ),
            call(
                PROJECTS,
                "addTrustPolicy",
                token,
                {
                    "projectId": pid,
                    "provider": {
                        "case": "buildkite",
                        "value": {"organizationSlug": "acme", "pipelineSlug": "deploy"},
                    },
                },
            ),
            call(
                PROJECTS,
                "addTrustPolicy",
                token,
                {
                    "projectId": pid,
                    "provider": {
                        "case": "circleci",
                        "value": {
                            "organizationUuid": "0b7f5b0e-8d43-4a59-a53e-3c1c5fbb1a11",
                            "projectUuid": "5A3E9C7F-1B2D-4E6F-8A9B-0C1D2E3F4A5B",
                        },
                    },
                },
            ),
            call(
                PROJECTS,
                "addTrustPolicy",
                token,
                {
                    "projectId": pid,
                    "provider": {
                        "case": "circleci",
                        "value": {"organizationUuid": "my-org", "projectUuid": "x"},
                    },
                },
            ),
        ],
    )
    created_token = ok(results[0])
    assert created_token["secret"].startswith("odp_") and len(created_token["secret"]) >= 40
    github, buildkite, circleci = (ok(r)["trustPolicy"] for r in results[1:4])
    assert github["github"] == {"repositoryOwner": "acme", "repository": "acme/web"}
    assert buildkite["buildkite"] == {"organizationSlug": "acme", "pipelineSlug": "deploy"}
    assert circleci["circleci"]["projectUuid"] == "5a3e9c7f-1b2d-4e6f-8a9b-0c1d2e3f4a5b"
    assert results[4]["error"]["code"] == "invalid_argument"
    assert "circleci.organization_uuid" in results[4]["error"]["message"]

    project_token = created_token["secret"]
    results = sdk_node(
        server.url,
        [
            call(PROJECTS, "listTokens", token, {"projectId": pid}),
            call(
                PROJECTS, "updateToken", token, {"tokenId": created_token["tokenId"], "description": "ci-2"}
            ),
            call(PROJECTS, "listTrustPolicies", token, {"projectId": pid}),
            call(
                PROJECTS,
                "removeTrustPolicy",
                token,
                {"projectId": pid, "trustPolicyId": buildkite["trustPolicyId"]},
            ),
            call(PROJECTS, "listTrustPolicies", token, {"projectId": pid}),
            # The project token reads its project, and nothing else.
            call(PROJECTS, "getProject", project_token, {"projectId": pid}),
            call(PROJECTS, "listProjects", project_token),
            call(PROJECTS, "listTokens", project_token, {"projectId": pid}),
            call(PROJECTS, "createProject", project_token, {"name": "nope"}),
            call(PROJECTS, "listTokens", token, {"projectId": pid}),
        ],
    )
    assert ok(results[0])["tokens"] == [{"tokenId": created_token["tokenId"], "description": "ci"}]
    assert "secret" not in str(ok(results[0]))
    assert ok(results[1]) == {}
    assert [p["trustPolicyId"] for p in ok(results[2])["trustPolicies"]] == [
        github["trustPolicyId"],
        buildkite["trustPolicyId"],
        circleci["trustPolicyId"],
    ]
    assert ok(results[3]) == {}
    assert [p["trustPolicyId"] for p in ok(results[4])["trustPolicies"]] == [
        github["trustPolicyId"],
        circleci["trustPolicyId"],
    ]
    assert ok(results[5])["project"]["projectId"] == pid
    assert [p["projectId"] for p in ok(results[6])["projects"]] == [pid]
    assert results[7]["error"]["code"] == "permission_denied"
    assert results[8]["error"]["code"] == "permission_denied"
    assert ok(results[9])["tokens"][0]["description"] == "ci-2"

    # Deleting the token revokes it at once.
    results = sdk_node(
        server.url,
        [
            call(PROJECTS, "deleteToken", token, {"tokenId": created_token["tokenId"]}),
            call(PROJECTS, "getProject", project_token, {"projectId": pid}),
            call(PROJECTS, "listTokens", token, {"projectId": pid}),
        ],
    )
    assert ok(results[0]) == {}
    assert results[1]["error"]["code"] == "unauthenticated"
    assert ok(results[2]) == {}


def test_organizations_are_isolated(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    _other_org, other_token = server.new_organization()
    project = ok(sdk_node(server.url, [call(PROJECTS, "createProject", token, {"name": "mine"})])[0])[
        "project"
    ]
    results = sdk_node(
        server.url,
        [
            call(PROJECTS, "getProject", other_token, {"projectId": project["projectId"]}),
            call(PROJECTS, "deleteProject", other_token, {"projectId": project["projectId"]}),
            call(PROJECTS, "listProjects", other_token),
            call(PROJECTS, "createProject", other_token, {"name": "x", "organizationId": _org_id}),
            call(PROJECTS, "getProject", token, {"projectId": project["projectId"]}),
        ],
    )
    assert results[0]["error"]["code"] == "permission_denied"
    assert results[1]["error"]["code"] == "permission_denied"
    assert ok(results[2]) == {}
    assert results[3]["error"]["code"] == "permission_denied"
    assert ok(results[4])["project"]["name"] == "mine"


def test_list_projects_pages_with_opaque_tokens(server: Server, org: tuple[str, str]) -> None:
    """sdk-node 1.4.0's ListProjectsRequest is empty: it gets the first page of 100 (the default)."""
    _org_id, token = org
    created = sdk_node(
        server.url, [call(PROJECTS, "createProject", token, {"name": f"p{i}"}) for i in range(103)]
    )
    ids = [ok(c)["project"]["projectId"] for c in created]
    listed = ok(sdk_node(server.url, [call(PROJECTS, "listProjects", token)])[0])["projects"]
    assert [p["projectId"] for p in listed] == ids[:100]
