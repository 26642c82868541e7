"""Every RPC against every kind of caller, through a real `opendepot serve`: each cell must answer as
authz_matrix.py says. Each cell gets fresh targets (a project with its tokens, a finished build, a pull
token), so that an allowed delete or reset cannot change what the next cell sees; the targets' build is
finished so that no call starts a builder (acquiring for it is `failed_precondition`, after authorization)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from opendepot.api.rpc.services import method_paths
from tests.support.oidc import LocalIssuer, github_claims
from tests.support.server import Server

from .authz_matrix import CREDENTIALS, EXPECTED, markdown_table

REPO = Path(__file__).resolve().parents[2]
STREAMING = {
    "depot.cli.v1beta1.LoginService/FinishLogin",
    "depot.buildkit.v1.BuildKitService/GetEndpoint",
    "depot.buildkit.v1.BuildKitService/ReportHealth",
    "depot.cli.v1.BuildService/ReportStatusStream",
}


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def server(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        data_dir=tmp_path_factory.mktemp("authz") / "data", database_url=None, extra_args=issuer.server_args()
    ).start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop()


def rpc(
    http: httpx.Client, server: Server, path: str, body: dict[str, Any], bearer: str | None
) -> tuple[str, Any]:
    """(code, response JSON) of one call, unary or streaming, in Connect's JSON form."""
    headers = {"connect-protocol-version": "1"}
    if bearer is not None:
        headers["authorization"] = bearer
    raw = json.dumps(body).encode()
    if path in STREAMING:
        headers["content-type"] = "application/connect+json"
        headers["connect-timeout-ms"] = "500"  # FinishLogin waits for an approval that never comes
        r = http.post(
            f"{server.url}/{path}", content=b"\0" + len(raw).to_bytes(4, "big") + raw, headers=headers
        )
        assert r.status_code < 500, (path, r.status_code, r.content[:300])
        if r.status_code != 200:
            return str(r.json().get("code")), None
        offset, last = 0, None
        while offset + 5 <= len(r.content):
            flags, length = r.content[offset], int.from_bytes(r.content[offset + 1 : offset + 5], "big")
            payload = json.loads(r.content[offset + 5 : offset + 5 + length] or b"{}")
            offset += 5 + length
            if flags & 0x02:
                error = payload.get("error")
                return ("ok", last) if error is None else (str(error.get("code")), None)
            last = payload
        return "ok", last
    headers["content-type"] = "application/json"
    r = http.post(f"{server.url}/{path}", content=raw, headers=headers)
    # 501 is Connect's own status for `unimplemented` (depot push); any other 5xx is a server fault.
    assert r.status_code < 500 or r.json().get("code") == "unimplemented", (
        path,
        r.status_code,
        r.content[:300],
    )
    return ("ok", r.json()) if r.status_code == 200 else (str(r.json().get("code")), None)


def ok(http: httpx.Client, server: Server, path: str, body: dict[str, Any], token: str) -> Any:
    code, reply = rpc(http, server, path, body, f"Bearer {token}")
    assert code == "ok", (path, code)
    return reply


@dataclass
class Org:
    token: str
    user_token: str
    sibling_project_token: str
    sibling_build_token: str


@dataclass
class Target:
    project: str
    project_token: str
    project_token_id: str
    build: str
    build_token: str
    pull_token: str
    trust_policy: str
    login_id: str


def new_org(http: httpx.Client, server: Server, owner: str) -> Org:
    _org_id, token = server.new_organization()
    # A user token: `depot login` approved by the admin command.
    login = ok(http, server, "depot.cli.v1beta1.LoginService/StartLogin", {}, token)
    server.admin("login", "approve", login["approveUrl"].rsplit("/", 1)[1], "--org", _org_id)
    code, reply = rpc(http, server, "depot.cli.v1beta1.LoginService/FinishLogin", {"id": login["id"]}, None)
    assert code == "ok", code
    sibling = new_target(http, server, token, owner)
    return Org(token, reply["token"], sibling.project_token, sibling.build_token)


def new_target(http: httpx.Client, server: Server, org_token: str, owner: str, login_id: str = "") -> Target:
    """A fresh project with a token, a trust policy, a finished build and a pull token. The targets share one
    waiting login (login_id): StartLogin bounds the logins one address may have waiting."""
    project = ok(
        http, server, "depot.core.v1.ProjectService/CreateProject", {"name": uuid.uuid4().hex[:8]}, org_token
    )["project"]["projectId"]
    created = ok(
        http,
        server,
        "depot.core.v1.ProjectService/CreateToken",
        {"projectId": project, "description": "t"},
        org_token,
    )
    policy = ok(
        http,
        server,
        "depot.core.v1.ProjectService/AddTrustPolicy",
        {"projectId": project, "github": {"repositoryOwner": owner, "repository": "web"}},
        org_token,
    )["trustPolicy"]["trustPolicyId"]
    build = ok(http, server, "depot.build.v1.BuildService/CreateBuild", {"projectId": project}, org_token)
    ok(
        http,
        server,
        "depot.build.v1.BuildService/FinishBuild",
        {"buildId": build["buildId"], "success": {}},
        build["buildToken"],
    )
    pull = ok(http, server, "depot.cli.v1.BuildService/GetPullToken", {"projectId": project}, org_token)
    if not login_id:
        login_id = ok(http, server, "depot.cli.v1beta1.LoginService/StartLogin", {}, org_token)["id"]
    return Target(
        project,
        created["secret"],
        created["tokenId"],
        build["buildId"],
        build["buildToken"],
        pull["token"],
        policy,
        login_id,
    )


def request(path: str, t: Target) -> dict[str, Any]:
    p, b = t.project, t.build
    period = {"startAt": "2026-01-01T00:00:00Z", "endAt": "2027-01-01T00:00:00Z"}
    bodies: dict[str, dict[str, Any]] = {
        "depot.cli.v1beta1.LoginService/StartLogin": {},
        "depot.cli.v1beta1.LoginService/FinishLogin": {"id": t.login_id},
        "depot.core.v1.OrganizationService/ListOrganizations": {},
        "depot.core.v1.ProjectService/ListProjects": {},
        "depot.cli.v1beta1.ProjectsService/ListProjects": {},
        "depot.core.v1.UsageService/GetUsage": period,
        "depot.core.v1.UsageService/ListProjectUsage": period,
        "depot.core.v1.ProjectService/CreateProject": {"name": "new"},
        "depot.core.v1.ProjectService/GetProject": {"projectId": p},
        "depot.core.v1.ProjectService/UpdateProject": {"projectId": p, "name": "renamed"},
        "depot.core.v1.ProjectService/DeleteProject": {"projectId": p},
        "depot.core.v1.ProjectService/ResetProject": {"projectId": p},
        "depot.cli.v1beta1.ProjectsService/ResetProjectCache": {"projectId": p},
        "depot.core.v1.ProjectService/ListTrustPolicies": {"projectId": p},
        "depot.core.v1.ProjectService/AddTrustPolicy": {
            "projectId": p,
            "buildkite": {"organizationSlug": "o", "pipelineSlug": uuid.uuid4().hex[:6]},
        },
        "depot.core.v1.ProjectService/RemoveTrustPolicy": {"projectId": p, "trustPolicyId": t.trust_policy},
        "depot.core.v1.ProjectService/ListTokens": {"projectId": p},
        "depot.core.v1.ProjectService/CreateToken": {"projectId": p, "description": "d"},
        "depot.core.v1.ProjectService/UpdateToken": {"tokenId": t.project_token_id, "description": "d"},
        "depot.core.v1.ProjectService/DeleteToken": {"tokenId": t.project_token_id},
        "depot.core.v1.UsageService/GetProjectUsage": {"projectId": p, **period},
        "depot.core.v1.BuildService/ListBuilds": {"projectId": p},
        "depot.core.v1.BuildService/GetBuild": {"buildId": b},
        "depot.core.v1.BuildService/ShareBuild": {"buildId": b},
        "depot.core.v1.BuildService/StopSharingBuild": {"buildId": b},
        "depot.build.v1.BuildService/CreateBuild": {"projectId": p},
        "depot.build.v1.BuildService/FinishBuild": {"buildId": b, "success": {}},
        "depot.build.v1.BuildService/GetBuildSteps": {"projectId": p, "buildId": b},
        "depot.build.v1.BuildService/GetBuildStepLogs": {
            "projectId": p,
            "buildId": b,
            "buildStepDigest": "sha256:0",
        },
        "depot.build.v1.RegistryService/ListImages": {"projectId": p},
        "depot.build.v1.RegistryService/DeleteImage": {"projectId": p, "imageTags": ["nope"]},
        "depot.buildkit.v1.BuildKitService/GetEndpoint": {"buildId": b, "platform": "PLATFORM_AMD64"},
        "depot.buildkit.v1.BuildKitService/ReportHealth": {"buildId": b, "platform": "PLATFORM_AMD64"},
        "depot.buildkit.v1.BuildKitService/ReleaseEndpoint": {"buildId": b, "platform": "PLATFORM_AMD64"},
        "depot.cli.v1.BuildService/CreateBuild": {"projectId": p},
        "depot.cli.v1.BuildService/GetBuild": {"buildId": b},
        "depot.cli.v1.BuildService/FinishBuild": {"buildId": b, "success": {}},
        "depot.cli.v1.BuildService/GetBuildKitConnection": {
            "buildId": b,
            "platform": "BUILDER_PLATFORM_AMD64",
        },
        "depot.cli.v1.BuildService/ReportBuildHealth": {"buildId": b, "platform": "BUILDER_PLATFORM_AMD64"},
        "depot.cli.v1.BuildService/ReportTimings": {"buildId": b},
        "depot.cli.v1.BuildService/ReportStatus": {"buildId": b},
        "depot.cli.v1.BuildService/ReportStatusStream": {"buildId": b},
        "depot.cli.v1.BuildService/ReportBuildContext": {"buildId": b},
        "depot.cli.v1.BuildService/ListBuilds": {"projectId": p},
        "depot.cli.v1.BuildService/GetPullInfo": {"buildId": b},
        "depot.cli.v1.BuildService/GetPullToken": {"buildId": b},
        "depot.cli.v1.PushService/StartPush": {"buildId": b},
        "depot.cli.v1.PushService/FinishPush": {"buildId": b},
    }
    return bodies[path]


# Rows whose request names a sub-resource that does not exist (a step digest, an image tag): `not_found` there
# comes after authorization, so only `permission_denied` counts as a denial.
ABSENT_SUBRESOURCE = {
    "depot.build.v1.BuildService/GetBuildStepLogs",
    "depot.build.v1.RegistryService/DeleteImage",
}


def classify(path: str, code: str) -> str:
    if code == "unauthenticated":
        return "unauth"
    if code == "permission_denied" or (code == "not_found" and path not in ABSENT_SUBRESOURCE):
        return "deny"
    return "allow"


def test_every_rpc_is_in_the_matrix() -> None:
    assert set(EXPECTED) == {p.lstrip("/") for p in method_paths()}


def test_readme_shows_the_matrix() -> None:
    assert markdown_table() in (REPO / "README.md").read_text()


def test_authorization_matrix(server: Server, issuer: LocalIssuer) -> None:
    owner = f"acme{uuid.uuid4().hex[:6]}"
    with httpx.Client(timeout=30) as http:
        home, away = new_org(http, server, owner), new_org(http, server, f"other{uuid.uuid4().hex[:6]}")
        credential: dict[str, Callable[[Target], str | None]] = {
            "none": lambda t: None,
            "junk": lambda t: "Bearer odo_" + "A" * 43,
            "org": lambda t: f"Bearer {home.token}",
            "other org": lambda t: f"Bearer {away.token}",
            "project": lambda t: f"Bearer {t.project_token}",
            "other project": lambda t: f"Bearer {home.sibling_project_token}",
            "build": lambda t: f"Bearer {t.build_token}",
            "other build": lambda t: f"Bearer {home.sibling_build_token}",
            "pull": lambda t: f"Bearer {t.pull_token}",
            "user": lambda t: f"Bearer {home.user_token}",
            "oidc": lambda t: (
                "Bearer "
                + issuer.mint(
                    issuer.issuer("github"), {**github_claims(owner, "web"), "jti": uuid.uuid4().hex}
                )
            ),
        }
        assert list(credential) == CREDENTIALS
        observed: dict[str, tuple[str, ...]] = {}
        codes: dict[str, list[str]] = {}
        waiting = ok(http, server, "depot.cli.v1beta1.LoginService/StartLogin", {}, home.token)["id"]
        for path in sorted(EXPECTED):
            cells, raw = [], []
            for name in CREDENTIALS:
                target = new_target(http, server, home.token, owner, waiting)
                code, _reply = rpc(http, server, path, request(path, target), credential[name](target))
                cells.append(classify(path, code))
                raw.append(code)
            observed[path], codes[path] = tuple(cells), raw
    wrong = {
        path: {
            c: f"{e} expected, got {codes[path][i]}"
            for i, (c, e) in enumerate(zip(CREDENTIALS, EXPECTED[path], strict=True))
            if observed[path][i] != e
        }
        for path in EXPECTED
        if observed[path] != EXPECTED[path]
    }
    assert not wrong, json.dumps(wrong, indent=1)
    assert "Traceback" not in server.log_text()
