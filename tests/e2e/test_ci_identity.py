"""CI identity: the `depot` CLI in a simulated GitHub Actions job (no DEPOT_TOKEN; the JWT comes from
ACTIONS_ID_TOKEN_REQUEST_URL, served by a local issuer) and in GitLab CI (DEPOT_OIDC_TOKEN) builds in a
project whose trust policy matches and is refused elsewhere; Buildkite and CircleCI tokens match their
policies; expired, wrong-audience, wrong-issuer, badly signed, replayed, `alg: none` and HMAC tokens
are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from protobuf import Oneof

from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.gen.depot.core.v1 import project_pb as pb
from tests.e2e.test_builds import build
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import clients_installed, depot
from tests.support.oidc import REQUEST_TOKEN, LocalIssuer, github_claims
from tests.support.rpc import call
from tests.support.server import Server

REPLAY_WINDOW = 4


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    local = LocalIssuer().start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def ci(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        data_dir=tmp_path_factory.mktemp("ci-identity") / "data",
        database_url=None,
        extra_args=[*issuer.server_args(), "--oidc-replay-window-seconds", str(REPLAY_WINDOW)],
    ).start()
    yield srv
    srv.stop()


def create_project(http: httpx.Client, srv: Server, token: str, name: str) -> str:
    r = call(
        http, srv.url, "depot.core.v1.ProjectService/CreateProject", pb.CreateProjectRequest(name=name), token
    )
    created = r.message(pb.CreateProjectResponse).project
    assert created is not None
    return created.project_id


def trust(http: httpx.Client, srv: Server, token: str, project: str, provider: Oneof[Any, Any]) -> None:
    request = pb.AddTrustPolicyRequest(project_id=project, provider=provider)
    reply = call(http, srv.url, "depot.core.v1.ProjectService/AddTrustPolicy", request, token)
    assert reply.code == "ok", reply.body[:300]


def create_build(http: httpx.Client, srv: Server, project: str, token: str) -> Any:
    return call(
        http,
        srv.url,
        "depot.cli.v1.BuildService/CreateBuild",
        cli.CreateBuildRequest(project_id=project),
        token,
    )


@pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
def test_cli_in_github_actions_and_gitlab_builds_where_trusted(
    ci: Server, issuer: LocalIssuer, tmp_path: Path
) -> None:
    _org, admin = ci.new_organization()
    with httpx.Client(timeout=30) as http:
        trusted = create_project(http, ci, admin, "trusted")
        untrusted = create_project(http, ci, admin, "untrusted")
        trust(
            http,
            ci,
            admin,
            trusted,
            Oneof("github", pb.TrustPolicy.GitHub(repository_owner="acme", repository="widgets")),
        )
        trust(
            http,
            ci,
            admin,
            trusted,
            Oneof(
                "gitlab",
                pb.TrustPolicy.GitLab(namespace_path="acme/platform", project_path="acme/platform/widgets"),
            ),
        )
    issuer.github_claims = github_claims("acme", "widgets")
    context = busybox_context(tmp_path / "ctx", "echo built-by-ci")
    home = tmp_path / "home"
    home.mkdir()
    actions = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GITHUB_ACTIONS": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": f"{issuer.base}/github/request-token?api-version=2.0",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
    }

    def build_as_ci(project: str, env: dict[str, str]) -> tuple[int, str]:
        return build(ci, None, project, context, env=env)

    code, output = build_as_ci(trusted, actions)
    assert code == 0, output
    assert "built-by-ci" in output
    code, output = build_as_ci(untrusted, actions)
    assert code != 0
    assert "permission_denied" in output or "not trusted" in output, output

    # Another repository of the same owner is not trusted.
    issuer.github_claims = github_claims("acme", "gadgets")
    code, output = build_as_ci(trusted, actions)
    assert code != 0 and ("permission_denied" in output or "not trusted" in output), output

    # GitLab: the CLI sends DEPOT_OIDC_TOKEN when GITLAB_CI is set (opendepot's GitLab trust policy).
    gitlab_token = issuer.mint(
        issuer.issuer("gitlab"),
        {
            "sub": "project_path:acme/platform/widgets:ref_type:branch:ref:main",
            "namespace_path": "acme/platform",
            "project_path": "acme/platform/widgets",
        },
    )
    gitlab = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GITLAB_CI": "true",
        "DEPOT_OIDC_TOKEN": gitlab_token,
    }
    code, output = build_as_ci(trusted, gitlab)
    assert code == 0, output

    listed = depot(ci.url, admin, "list", "builds", "--project", trusted, "--output", "json")
    statuses = [b["status"] for b in json.loads(listed.stdout)]
    assert statuses.count("finished") >= 2, statuses


@pytest.mark.skipif(not clients_installed(), reason="the official clients are not installed (./dev setup)")
def test_other_providers_match_their_policies(ci: Server, issuer: LocalIssuer) -> None:
    _org, admin = ci.new_organization()
    circle_org, circle_project = str(uuid.uuid4()), str(uuid.uuid4())
    with httpx.Client(timeout=30) as http:
        project = create_project(http, ci, admin, "providers")
        trust(
            http,
            ci,
            admin,
            project,
            Oneof("buildkite", pb.TrustPolicy.Buildkite(organization_slug="acme", pipeline_slug="deploy")),
        )
        trust(
            http,
            ci,
            admin,
            project,
            Oneof(
                "circleci", pb.TrustPolicy.CircleCI(organization_uuid=circle_org, project_uuid=circle_project)
            ),
        )
        cases = [
            (
                issuer.issuer("buildkite"),
                {
                    "sub": "organization:acme:pipeline:deploy",
                    "organization_slug": "acme",
                    "pipeline_slug": "deploy",
                },
                "ok",
            ),
            (
                issuer.issuer("buildkite"),
                {"sub": "x", "organization_slug": "acme", "pipeline_slug": "other"},
                "permission_denied",
            ),
            (
                issuer.issuer("circleci", circle_org),
                {
                    "sub": "org/x/project/y/user/z",
                    "oidc.circleci.com/org-id": circle_org,
                    "oidc.circleci.com/project-id": circle_project,
                },
                "ok",
            ),
            (
                issuer.issuer("circleci", str(uuid.uuid4())),
                {"sub": "s", "oidc.circleci.com/project-id": circle_project},
                "permission_denied",
            ),
            (issuer.issuer("github"), github_claims("acme", "deploy"), "permission_denied"),
        ]
        for iss, claims, expected in cases:
            reply = create_build(http, ci, project, issuer.mint(iss, claims))
            assert reply.code == expected, (iss, claims, reply.body[:300])
        # A CI identity builds; it does not manage projects.
        ok_token = issuer.mint(issuer.issuer("buildkite"), cases[0][1])
        reply = call(
            http,
            ci.url,
            "depot.core.v1.ProjectService/DeleteProject",
            pb.DeleteProjectRequest(project_id=project),
            ok_token,
        )
        assert reply.code == "permission_denied"
        # In the registry it reaches the trusted project only.
        basic = base64.b64encode(f"x-token:{ok_token}".encode()).decode()
        other = create_project(http, ci, admin, "not-trusted")
        got = http.get(
            f"{ci.url}/registry/token",
            params={"scope": [f"repository:{project}:pull,push", f"repository:{other}:pull"]},
            headers={"Authorization": f"Basic {basic}"},
        )
        access = jwt.decode(got.json()["token"], options={"verify_signature": False})["access"]
        assert access == [{"type": "repository", "name": project, "actions": ["pull", "push"]}]


def forge_hs256(payload: dict[str, Any], secret: bytes, kid: str) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(payload).encode())}"
    return f"{signing_input}.{part(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def test_bad_tokens_are_refused(ci: Server, issuer: LocalIssuer) -> None:
    _org, admin = ci.new_organization()
    claims = github_claims("acme", "refusals")
    github = issuer.issuer("github")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    unsigned = jwt.encode(
        {"iss": github, "aud": "https://depot.dev", "iat": now, "exp": now + 300, **claims},
        "",
        algorithm="none",
    )
    # The classic confusion attack: HS256 "signed" with the issuer's public key as the HMAC secret.
    public_pem = issuer.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    hmac_forged = forge_hs256(
        {"iss": github, "aud": "https://depot.dev", "iat": now, "exp": now + 300, **claims},
        public_pem,
        issuer.kid,
    )
    with httpx.Client(timeout=30) as http:
        project = create_project(http, ci, admin, "refusals")
        trust(
            http,
            ci,
            admin,
            project,
            Oneof("github", pb.TrustPolicy.GitHub(repository_owner="acme", repository="acme/refusals")),
        )
        assert create_build(http, ci, project, issuer.mint(github, claims)).code == "ok"
        refused = {
            "expired": issuer.mint(github, claims, issued_ago=1000, lifetime=300),
            "audience": issuer.mint(github, claims, audience="https://elsewhere.example"),
            "issuer": issuer.mint(f"{issuer.base}/evil", claims),
            "signature": issuer.mint(github, claims, key=other_key),
            "algorithm 'none'": unsigned,
            "algorithm 'HS256'": hmac_forged,
            "not valid yet": issuer.mint(github, claims, issued_ago=-1000),
        }
        for needle, token in refused.items():
            reply = create_build(http, ci, project, token)
            assert reply.code == "unauthenticated", (needle, reply.body[:300])
            assert needle in reply.error["message"], (needle, reply.error)
        # An unknown key id makes the server refetch the issuer's keys (once per cool-down), then refuse.
        fetches = issuer.jwks_fetches
        reply = create_build(http, ci, project, issuer.mint(github, claims, kid="rotated-away"))
        assert reply.code == "unauthenticated" and "rotated-away" in reply.error["message"]
        assert issuer.jwks_fetches >= fetches  # refetched unless a worker did within the cool-down

        # Replay: the same token works within the window after its first use (one CLI run), not after.
        token = issuer.mint(github, claims)
        assert create_build(http, ci, project, token).code == "ok"
        assert create_build(http, ci, project, token).code == "ok"
        time.sleep(REPLAY_WINDOW + 1)
        reply = create_build(http, ci, project, token)
        assert reply.code == "unauthenticated" and "already used" in reply.error["message"], reply.body[:300]
