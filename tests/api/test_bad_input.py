"""Bad input and wrong credentials, for every implemented RPC, through a real server over HTTP/1.1 with
binary protobuf (and JSON). Each case gets the right Connect code and a message naming the problem;
nothing answers 500; nothing is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import pytest
from protobuf import DescFieldValueList, DescFieldValueScalar, DescMethod, Message, Oneof, ScalarType
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.api.rpc.services import SERVICES
from opendepot.gen.depot.cli.v1beta1 import projects_pb as beta
from opendepot.gen.depot.core.v1 import organization_pb as orgpb
from opendepot.gen.depot.core.v1 import project_pb as pb
from opendepot.gen.depot.core.v1 import usage_pb as upb
from tests.support.rpc import call
from tests.support.server import Server

PS = "depot.core.v1.ProjectService"
US = "depot.core.v1.UsageService"


def github(owner: str, repository: str = "") -> Oneof[Literal["github"], pb.TrustPolicy.GitHub]:
    return Oneof("github", pb.TrustPolicy.GitHub(repository_owner=owner, repository=repository))


def buildkite(org: str, pipeline: str = "") -> Oneof[Literal["buildkite"], pb.TrustPolicy.Buildkite]:
    return Oneof("buildkite", pb.TrustPolicy.Buildkite(organization_slug=org, pipeline_slug=pipeline))


def circleci(org: str, project: str) -> Oneof[Literal["circleci"], pb.TrustPolicy.CircleCI]:
    return Oneof("circleci", pb.TrustPolicy.CircleCI(organization_uuid=org, project_uuid=project))


@dataclass
class World:
    """Fixtures for one test run: an org with two projects and tokens of every kind."""

    org_token: str
    other_org_token: str
    project: str
    other_project: str
    project_token: str
    project_token_id: str
    other_project_token: str
    deleted_token: str
    trust_policy: str


def make_world(server: Server, http: httpx.Client) -> World:
    _org, token = server.new_organization()
    _other, other_token = server.new_organization()

    def create(name: str) -> str:
        r = call(http, server.url, f"{PS}/CreateProject", pb.CreateProjectRequest(name=name), token)
        project = r.message(pb.CreateProjectResponse).project
        assert project is not None
        return project.project_id

    def new_token(project_id: str) -> pb.CreateTokenResponse:
        r = call(
            http,
            server.url,
            f"{PS}/CreateToken",
            pb.CreateTokenRequest(project_id=project_id, description="t"),
            token,
        )
        return r.message(pb.CreateTokenResponse)

    project, other_project = create("one"), create("two")
    project_token, other_project_token, doomed = (
        new_token(project),
        new_token(other_project),
        new_token(project),
    )
    r = call(http, server.url, f"{PS}/DeleteToken", pb.DeleteTokenRequest(token_id=doomed.token_id), token)
    assert r.status == 200
    r = call(
        http,
        server.url,
        f"{PS}/AddTrustPolicy",
        pb.AddTrustPolicyRequest(
            project_id=project,
            provider=github("acme", "web"),
        ),
        token,
    )
    added = r.message(pb.AddTrustPolicyResponse).trust_policy
    assert added is not None
    policy = added.trust_policy_id
    return World(
        token,
        other_token,
        project,
        other_project,
        project_token.secret,
        project_token.token_id,
        other_project_token.secret,
        doomed.secret,
        policy,
    )


@dataclass
class Rpc:
    path: str
    valid: Callable[[World], Message[Any]]
    # Which project the request is about (None: not project-scoped), and whether managing it needs an
    # organization token (project tokens get permission_denied).
    project_scoped: bool = True
    org_only: bool = True


RPCS: list[Rpc] = [
    Rpc(f"{PS}/ListProjects", lambda w: pb.ListProjectsRequest(), project_scoped=False, org_only=False),
    Rpc(f"{PS}/GetProject", lambda w: pb.GetProjectRequest(project_id=w.project), org_only=False),
    Rpc(f"{PS}/CreateProject", lambda w: pb.CreateProjectRequest(name="x"), project_scoped=False),
    Rpc(f"{PS}/UpdateProject", lambda w: pb.UpdateProjectRequest(project_id=w.project, name="y")),
    Rpc(f"{PS}/DeleteProject", lambda w: pb.DeleteProjectRequest(project_id=w.project)),
    Rpc(f"{PS}/ResetProject", lambda w: pb.ResetProjectRequest(project_id=w.project), org_only=False),
    Rpc(f"{PS}/ListTrustPolicies", lambda w: pb.ListTrustPoliciesRequest(project_id=w.project)),
    Rpc(
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(
            project_id=w.project,
            provider=buildkite("a", "b"),
        ),
    ),
    Rpc(
        f"{PS}/RemoveTrustPolicy",
        lambda w: pb.RemoveTrustPolicyRequest(project_id=w.project, trust_policy_id=w.trust_policy),
    ),
    Rpc(f"{PS}/ListTokens", lambda w: pb.ListTokensRequest(project_id=w.project)),
    Rpc(f"{PS}/CreateToken", lambda w: pb.CreateTokenRequest(project_id=w.project, description="d")),
    Rpc(f"{PS}/UpdateToken", lambda w: pb.UpdateTokenRequest(token_id=w.project_token_id, description="d")),
    Rpc(f"{PS}/DeleteToken", lambda w: pb.DeleteTokenRequest(token_id=w.project_token_id)),
    Rpc(
        "depot.core.v1.OrganizationService/ListOrganizations",
        lambda w: orgpb.ListOrganizationsRequest(),
        project_scoped=False,
        org_only=False,
    ),
    Rpc(
        "depot.cli.v1beta1.ProjectsService/ListProjects",
        lambda w: beta.ListProjectsRequest(),
        project_scoped=False,
        org_only=False,
    ),
    Rpc(
        "depot.cli.v1beta1.ProjectsService/ResetProjectCache",
        lambda w: beta.ResetProjectCacheRequest(project_id=w.project),
        org_only=False,
    ),
]
IDS = [r.path.split(".")[-1] for r in RPCS]

# Field-level cases: (path, request from world, expected code, text the message must contain).
LONG = "x" * 300
FIELD_CASES: list[tuple[str, Callable[[World], Message[Any]], str, str]] = [
    (f"{PS}/GetProject", lambda w: pb.GetProjectRequest(), "invalid_argument", "project_id"),
    (f"{PS}/GetProject", lambda w: pb.GetProjectRequest(project_id=LONG), "invalid_argument", "project_id"),
    (f"{PS}/GetProject", lambda w: pb.GetProjectRequest(project_id="zzzzzzzzzz"), "not_found", "zzzzzzzzzz"),
    (f"{PS}/CreateProject", lambda w: pb.CreateProjectRequest(), "invalid_argument", "name"),
    (f"{PS}/CreateProject", lambda w: pb.CreateProjectRequest(name="   "), "invalid_argument", "name"),
    (f"{PS}/CreateProject", lambda w: pb.CreateProjectRequest(name=LONG), "invalid_argument", "name"),
    (f"{PS}/CreateProject", lambda w: pb.CreateProjectRequest(name="a\nb"), "invalid_argument", "name"),
    (
        f"{PS}/CreateProject",
        lambda w: pb.CreateProjectRequest(name="x", region_id="mars-1"),
        "invalid_argument",
        "region_id",
    ),
    (
        f"{PS}/CreateProject",
        lambda w: pb.CreateProjectRequest(name="x", cache_policy=pb.CachePolicy(keep_days=-1)),
        "invalid_argument",
        "cache_policy.keep_days",
    ),
    (
        f"{PS}/CreateProject",
        lambda w: pb.CreateProjectRequest(name="x", cache_policy=pb.CachePolicy(keep_gb=-5)),
        "invalid_argument",
        "cache_policy.keep_gb",
    ),
    (
        f"{PS}/CreateProject",
        lambda w: pb.CreateProjectRequest(name="x", cache_policy=pb.CachePolicy(keep_bytes=-5)),
        "invalid_argument",
        "cache_policy.keep_bytes",
    ),
    (
        f"{PS}/CreateProject",
        lambda w: pb.CreateProjectRequest(name="x", hardware=pb.Hardware(99)),
        "invalid_argument",
        "hardware",
    ),
    (
        f"{PS}/CreateProject",
        lambda w: pb.CreateProjectRequest(name="x", organization_id="zzzzzzzzzz"),
        "permission_denied",
        "zzzzzzzzzz",
    ),
    (
        f"{PS}/UpdateProject",
        lambda w: pb.UpdateProjectRequest(project_id=w.project, name=""),
        "invalid_argument",
        "name",
    ),
    (
        f"{PS}/UpdateProject",
        lambda w: pb.UpdateProjectRequest(project_id=w.project, region_id="nope"),
        "invalid_argument",
        "region_id",
    ),
    (
        f"{PS}/UpdateProject",
        lambda w: pb.UpdateProjectRequest(project_id="zzzzzzzzzz", name="n"),
        "not_found",
        "zzzzzzzzzz",
    ),
    (f"{PS}/DeleteProject", lambda w: pb.DeleteProjectRequest(), "invalid_argument", "project_id"),
    (f"{PS}/DeleteProject", lambda w: pb.DeleteProjectRequest(project_id="zzzzzzzzzz"), "not_found", "zzz"),
    (f"{PS}/ResetProject", lambda w: pb.ResetProjectRequest(project_id="zzzzzzzzzz"), "not_found", "zzz"),
    (
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(project_id=w.project),
        "invalid_argument",
        "provider",
    ),
    (
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(project_id=w.project, provider=github("acme")),
        "invalid_argument",
        "github.repository",
    ),
    (
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(
            project_id=w.project,
            provider=github("acme", "other/web"),
        ),
        "invalid_argument",
        "github.repository",
    ),
    (
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(
            project_id=w.project,
            provider=github("acme", "web"),
        ),
        "already_exists",
        "github",
    ),
    (
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(project_id=w.project, provider=buildkite("a")),
        "invalid_argument",
        "buildkite.pipeline_slug",
    ),
    (
        f"{PS}/AddTrustPolicy",
        lambda w: pb.AddTrustPolicyRequest(
            project_id=w.project,
            provider=circleci("0b7f5b0e-8d43-4a59-a53e-3c1c5fbb1a11", "nope"),
        ),
        "invalid_argument",
        "circleci.project_uuid",
    ),
    (
        f"{PS}/RemoveTrustPolicy",
        lambda w: pb.RemoveTrustPolicyRequest(project_id=w.project),
        "invalid_argument",
        "trust_policy_id",
    ),
    (
        f"{PS}/RemoveTrustPolicy",
        lambda w: pb.RemoveTrustPolicyRequest(project_id=w.project, trust_policy_id="zzzzzzzzzz"),
        "not_found",
        "zzzzzzzzzz",
    ),
    (
        f"{PS}/RemoveTrustPolicy",
        lambda w: pb.RemoveTrustPolicyRequest(project_id=w.other_project, trust_policy_id=w.trust_policy),
        "not_found",
        w_policy := "trust policy",
    ),
    (
        f"{PS}/CreateToken",
        lambda w: pb.CreateTokenRequest(project_id=w.project),
        "invalid_argument",
        "description",
    ),
    (
        f"{PS}/CreateToken",
        lambda w: pb.CreateTokenRequest(project_id=w.project, description=LONG),
        "invalid_argument",
        "description",
    ),
    (
        f"{PS}/UpdateToken",
        lambda w: pb.UpdateTokenRequest(token_id=w.project_token_id),
        "invalid_argument",
        "description",
    ),
    (
        f"{PS}/UpdateToken",
        lambda w: pb.UpdateTokenRequest(token_id="zzzzzzzzzz", description="d"),
        "not_found",
        "zzzzzzzzzz",
    ),
    (f"{PS}/DeleteToken", lambda w: pb.DeleteTokenRequest(), "invalid_argument", "token_id"),
    (f"{PS}/DeleteToken", lambda w: pb.DeleteTokenRequest(token_id="zzzzzzzzzz"), "not_found", "zzz"),
    (
        f"{PS}/ListProjects",
        lambda w: pb.ListProjectsRequest(page_token="garbage!"),
        "invalid_argument",
        "page_token",
    ),
    (f"{PS}/ListProjects", lambda w: pb.ListProjectsRequest(page_size=-1), "invalid_argument", "page_size"),
    (
        "depot.cli.v1beta1.ProjectsService/ResetProjectCache",
        lambda w: beta.ResetProjectCacheRequest(),
        "invalid_argument",
        "project_id",
    ),
    # Times past datetime's range (protobuf's to_datetime raised OverflowError: an internal error).
    (
        f"{US}/GetUsage",
        lambda w: upb.GetUsageRequest(end_at=Timestamp(seconds=253402300799, nanos=999999999)),
        "invalid_argument",
        "end_at",
    ),
    (
        f"{US}/GetProjectUsage",
        lambda w: upb.GetProjectUsageRequest(project_id=w.project, start_at=Timestamp(seconds=-(10**12))),
        "invalid_argument",
        "start_at",
    ),
    (
        f"{US}/ListProjectUsage",
        lambda w: upb.ListProjectUsageRequest(end_at=Timestamp(seconds=10**12)),
        "invalid_argument",
        "end_at",
    ),
]


def snapshot(server: Server, http: httpx.Client, w: World) -> Any:
    """Everything the org can see, to prove that failed calls wrote nothing."""
    projects = call(http, server.url, f"{PS}/ListProjects", pb.ListProjectsRequest(), w.org_token)
    state: list[Any] = [projects.message(pb.ListProjectsResponse).to_json()]
    for pid in (w.project, w.other_project):
        for method, req in (
            ("ListTokens", pb.ListTokensRequest(project_id=pid)),
            ("ListTrustPolicies", pb.ListTrustPoliciesRequest(project_id=pid)),
        ):
            r = call(http, server.url, f"{PS}/{method}", req, w.org_token)
            assert r.status == 200
            state.append(r.body)
    return state


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    """Shared by every case on one server: no case here may change anything (each checks that)."""
    with httpx.Client(timeout=30) as http:
        return make_world(server, http)


def test_credentials_for_every_rpc(server: Server, http: httpx.Client, world: World) -> None:
    before = snapshot(server, http, world)
    failures = []
    for rpc in RPCS:
        request = rpc.valid(world)
        cases: list[tuple[str, str | None, str]] = [
            ("no token", None, "unauthenticated"),
            ("unknown token", "odo_" + "A" * 43, "unauthenticated"),
            ("deleted token", world.deleted_token, "unauthenticated"),
        ]
        if rpc.project_scoped:
            cases.append(("another organization's token", world.other_org_token, "permission_denied"))
            cases.append(("another project's token", world.other_project_token, "permission_denied"))
        if rpc.org_only:
            cases.append(("a project token", world.project_token, "permission_denied"))
        for label, token, expected in cases:
            reply = call(http, server.url, rpc.path, request, token)
            if reply.status >= 500 or reply.code != expected or not reply.error.get("message"):
                failures.append(f"{rpc.path} with {label}: {reply.status} {reply.body[:200]!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(server, http, world) == before


def test_bearer_scheme_is_case_insensitive(server: Server, http: httpx.Client, world: World) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = call(
            http,
            server.url,
            f"{PS}/ListProjects",
            pb.ListProjectsRequest(),
            None,
            headers={"authorization": f"{scheme} {world.org_token}"},
        )
        assert r.status == 200
    r = call(
        http,
        server.url,
        f"{PS}/ListProjects",
        pb.ListProjectsRequest(),
        None,
        headers={"authorization": f"Basic {world.org_token}"},
    )
    assert r.code == "unauthenticated" and "Bearer" in r.error["message"]


@pytest.mark.parametrize("path", [r.path for r in RPCS], ids=IDS)
def test_malformed_bodies(server: Server, http: httpx.Client, world: World, path: str) -> None:
    token = world.org_token
    before = snapshot(server, http, world)
    for body, content_type in (
        (b"\xff\xff\xff\xff", "application/proto"),
        (b"\x0a\x05ab", "application/proto"),  # truncated string
        (b'{"projectId": ', "application/json"),
        (b"[1, 2]", "application/json"),
    ):
        reply = call(http, server.url, path, body, token, content_type=content_type)
        assert reply.code == "invalid_argument", (path, body, reply.status, reply.body[:200])
        assert reply.error["message"]
    assert snapshot(server, http, world) == before


@pytest.mark.parametrize(
    ("path", "make", "code", "needle"),
    FIELD_CASES,
    ids=[f"{p.split('/')[-1]}-{c}-{i}" for i, (p, _m, c, _n) in enumerate(FIELD_CASES)],
)
def test_field_errors(
    server: Server,
    http: httpx.Client,
    world: World,
    path: str,
    make: Callable[[World], Message[Any]],
    code: str,
    needle: str,
) -> None:
    before = snapshot(server, http, world)
    reply = call(http, server.url, path, make(world), world.org_token)
    assert reply.code == code, (reply.status, reply.body[:300])
    assert needle in reply.error["message"]
    assert snapshot(server, http, world) == before


def test_json_codec_and_unknown_methods(server: Server, http: httpx.Client, world: World) -> None:
    r = call(
        http,
        server.url,
        f"{PS}/GetProject",
        json.dumps({"projectId": world.project}).encode(),
        world.org_token,
        content_type="application/json",
    )
    assert r.status == 200 and r.content_type.startswith("application/json")
    assert json.loads(r.body)["project"]["projectId"] == world.project
    for path in (f"{PS}/NoSuchMethod", "/depot.nope.v1.Nothing/Call"):
        r = call(http, server.url, path, b"{}", world.org_token, content_type="application/json")
        assert (r.status, r.code) == (404, "unimplemented")
    r = call(
        http,
        server.url,
        "depot.cli.v1.PushService/StartPush",
        b"{}",
        world.org_token,
        content_type="application/json",
    )
    assert r.code == "unimplemented" and "depot push" in r.error["message"]


def _nul_request(method: DescMethod) -> tuple[dict[str, Any], set[str]]:
    """A JSON request for method with every top-level string (or list of strings) holding a NUL, and the
    proto names of those fields."""
    request: dict[str, Any] = {}
    names = set()
    for field in method.input.fields:
        value = field.value
        if isinstance(value, DescFieldValueScalar) and value.scalar == ScalarType.STRING:
            request[field.json_name] = "x\u0000y"
        elif isinstance(value, DescFieldValueList) and value.element == ScalarType.STRING:
            request[field.json_name] = ["x\u0000y"]
        else:
            continue
        names.add(field.name)
    return request, names


NUL_CASES = [
    (f"/{service.desc().type_name}/{method.name}", *_nul_request(method))
    for service in SERVICES
    for method in service.desc().methods
    if method.method_kind == "unary" and _nul_request(method)[0]
]


def test_a_nul_in_any_string_of_any_request_is_invalid_argument_naming_it(
    server: Server, http: httpx.Client, world: World
) -> None:
    """PostgreSQL's text refuses a NUL: it used to come back as an internal error from the driver."""
    assert len(NUL_CASES) > 30
    before = snapshot(server, http, world)
    failures = []
    for path, request, names in NUL_CASES:
        body = json.dumps(request).encode()
        reply = call(http, server.url, path, body, world.org_token, content_type="application/json")
        message = reply.error.get("message", "") if reply.status != 200 else ""
        field = message.split(":", 1)[0].split("[", 1)[0]
        if reply.code != "invalid_argument" or "NUL" not in message or field not in names:
            failures.append((path, reply.status, reply.body[:200]))
    assert failures == []
    assert snapshot(server, http, world) == before


def test_a_nul_deep_in_a_request_is_named_by_its_path(
    server: Server, http: httpx.Client, world: World
) -> None:
    request = {"projectId": world.project, "github": {"repositoryOwner": "a\u0000", "repository": "web"}}
    reply = call(
        http,
        server.url,
        f"{PS}/AddTrustPolicy",
        json.dumps(request).encode(),
        world.org_token,
        content_type="application/json",
    )
    assert reply.code == "invalid_argument"
    assert reply.error["message"] == "github.repository_owner: must not contain a NUL character"
