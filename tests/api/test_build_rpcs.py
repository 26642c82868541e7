"""Bad input and wrong credentials for the build RPCs (cli.v1, build.v1, buildkit.v1), over the wire."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from protobuf import Message

from opendepot.builders.access import supported_platforms
from opendepot.gen.depot.build.v1 import build_pb as b1
from opendepot.gen.depot.build.v1 import registry_pb as reg
from opendepot.gen.depot.buildkit.v1 import buildkit_pb as bk
from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.gen.depot.core.v1 import project_pb as pb
from tests.support.rpc import call
from tests.support.server import Server

BS = "depot.cli.v1.BuildService"


@dataclass
class Builds:
    org_token: str
    other_org_token: str
    project: str
    other_project_token: str
    build: str
    build_token: str
    other_build_token: str


@pytest.fixture(scope="module")
def world(server: Server) -> Builds:
    _org, token = server.new_organization()
    _other, other_token = server.new_organization()
    with httpx.Client(timeout=30) as http:

        def project(name: str) -> str:
            r = call(
                http,
                server.url,
                "depot.core.v1.ProjectService/CreateProject",
                pb.CreateProjectRequest(name=name),
                token,
            )
            created = r.message(pb.CreateProjectResponse).project
            assert created is not None
            return created.project_id

        mine, theirs = project("builds"), project("other")
        r = call(
            http,
            server.url,
            "depot.core.v1.ProjectService/CreateToken",
            pb.CreateTokenRequest(project_id=theirs, description="x"),
            token,
        )
        theirs_token = r.message(pb.CreateTokenResponse).secret
        first = call(http, server.url, f"{BS}/CreateBuild", cli.CreateBuildRequest(project_id=mine), token)
        second = call(http, server.url, f"{BS}/CreateBuild", cli.CreateBuildRequest(project_id=mine), token)
        one, two = first.message(cli.CreateBuildResponse), second.message(cli.CreateBuildResponse)
    return Builds(token, other_token, mine, theirs_token, one.build_id, one.build_token, two.build_token)


@dataclass
class Case:
    path: str
    make: Callable[[Builds], Message[Any]]


PER_BUILD = [
    Case(f"{BS}/GetBuild", lambda w: cli.GetBuildRequest(build_id=w.build)),
    Case(f"{BS}/FinishBuild", lambda w: cli.FinishBuildRequest(build_id=w.build)),
    Case(f"{BS}/GetBuildKitConnection", lambda w: cli.GetBuildKitConnectionRequest(build_id=w.build)),
    Case(f"{BS}/ReportBuildHealth", lambda w: cli.ReportBuildHealthRequest(build_id=w.build)),
    Case(f"{BS}/ReportTimings", lambda w: cli.ReportTimingsRequest(build_id=w.build)),
    Case(f"{BS}/ReportStatus", lambda w: cli.ReportStatusRequest(build_id=w.build)),
    Case(f"{BS}/ReportBuildContext", lambda w: cli.ReportBuildContextRequest(build_id=w.build)),
    Case(f"{BS}/GetPullInfo", lambda w: cli.GetPullInfoRequest(build_id=w.build)),
    Case("depot.build.v1.BuildService/FinishBuild", lambda w: b1.FinishBuildRequest(build_id=w.build)),
    Case(
        "depot.buildkit.v1.BuildKitService/ReleaseEndpoint",
        lambda w: bk.ReleaseEndpointRequest(build_id=w.build),
    ),
]


@pytest.mark.parametrize("case", PER_BUILD, ids=[c.path.split(".")[-1] for c in PER_BUILD])
def test_per_build_rpcs_refuse_the_wrong_callers(
    server: Server, http: httpx.Client, world: Builds, case: Case
) -> None:
    request = case.make(world)
    for label, token, expected in [
        ("no token", None, "unauthenticated"),
        ("unknown token", "odb_" + "x" * 43, "unauthenticated"),
        ("another organization's token", world.other_org_token, "permission_denied"),
        ("another project's token", world.other_project_token, "permission_denied"),
        ("another build's token", world.other_build_token, "permission_denied"),
    ]:
        reply = call(http, server.url, case.path, request, token)
        assert reply.code == expected, (label, reply.status, reply.body[:200])
        assert reply.error["message"]
    blank = type(request)()
    reply = call(http, server.url, case.path, blank, world.build_token)
    assert reply.code == "invalid_argument" and "build_id" in reply.error["message"]
    unknown = type(request)(build_id="zzzzzzzzzz")
    reply = call(http, server.url, case.path, unknown, world.org_token)
    assert reply.code == "not_found" and "zzzzzzzzzz" in reply.error["message"]


def test_create_build_errors(server: Server, http: httpx.Client, world: Builds) -> None:
    cases: list[tuple[Message[Any], str | None, str, str]] = [
        (cli.CreateBuildRequest(project_id=""), world.org_token, "not_found", "project"),
        (cli.CreateBuildRequest(), world.org_token, "not_found", "project"),
        (cli.CreateBuildRequest(project_id="zzzzzzzzzz"), world.org_token, "not_found", "zzzzzzzzzz"),
        (
            cli.CreateBuildRequest(project_id=world.project),
            world.other_org_token,
            "permission_denied",
            world.project,
        ),
        (
            cli.CreateBuildRequest(project_id=world.project),
            world.other_project_token,
            "permission_denied",
            "project",
        ),
        (
            cli.CreateBuildRequest(project_id=world.project),
            world.build_token,
            "permission_denied",
            "build token",
        ),
        (cli.CreateBuildRequest(project_id=world.project), None, "unauthenticated", "Authorization"),
    ]
    for request, token, code, needle in cases:
        reply = call(http, server.url, f"{BS}/CreateBuild", request, token)
        assert reply.code == code and needle in reply.error["message"], (request, reply.body[:200])
    for path, request in [
        ("depot.build.v1.BuildService/CreateBuild", b1.CreateBuildRequest(project_id="zzzzzzzzzz"))
    ]:
        reply = call(http, server.url, path, request, world.org_token)
        assert reply.code == "not_found"


def test_finish_needs_a_result_and_arm64_needs_a_handler(
    server: Server, http: httpx.Client, world: Builds
) -> None:
    reply = call(
        http, server.url, f"{BS}/FinishBuild", cli.FinishBuildRequest(build_id=world.build), world.build_token
    )
    assert reply.code == "invalid_argument" and "result" in reply.error["message"]
    if "arm64" not in supported_platforms():
        reply = call(
            http,
            server.url,
            f"{BS}/GetBuildKitConnection",
            cli.GetBuildKitConnectionRequest(build_id=world.build, platform=cli.BuilderPlatform.ARM64),
            world.build_token,
        )
        assert reply.code == "failed_precondition" and "arm64" in reply.error["message"]


def test_list_builds_is_newest_first_and_pages(server: Server, http: httpx.Client, world: Builds) -> None:
    r = call(
        http,
        server.url,
        f"{BS}/ListBuilds",
        cli.ListBuildsRequest(project_id=world.project, page_size=1),
        world.org_token,
    )
    page = r.message(cli.ListBuildsResponse)
    assert len(page.builds) == 1 and page.next_page_token
    r = call(
        http,
        server.url,
        f"{BS}/ListBuilds",
        cli.ListBuildsRequest(project_id=world.project, page_size=1, page_token=page.next_page_token),
        world.org_token,
    )
    rest = r.message(cli.ListBuildsResponse)
    assert [b.id for b in page.builds + rest.builds][::-1][-1] != ""
    everything = call(
        http, server.url, f"{BS}/ListBuilds", cli.ListBuildsRequest(project_id=world.project), world.org_token
    ).message(cli.ListBuildsResponse)
    assert [b.id for b in everything.builds] == [b.id for b in page.builds + rest.builds]
    assert everything.builds[0].created_at is not None and everything.builds[0].finished_at is None
    assert all(b.status == cli.BuildStatus.RUNNING for b in everything.builds)
    r = call(
        http,
        server.url,
        f"{BS}/ListBuilds",
        cli.ListBuildsRequest(project_id=world.project),
        world.build_token,
    )
    assert r.code == "permission_denied"


PER_PROJECT = [
    Case("depot.build.v1.RegistryService/ListImages", lambda w: reg.ListImagesRequest(project_id=w.project)),
    Case(
        "depot.build.v1.RegistryService/DeleteImage",
        lambda w: reg.DeleteImageRequest(project_id=w.project, image_tags=["latest"]),
    ),
    Case(f"{BS}/GetPullToken", lambda w: cli.GetPullTokenRequest(project_id=w.project)),
]


@pytest.mark.parametrize("case", PER_PROJECT, ids=[c.path.split("/")[-1] for c in PER_PROJECT])
def test_registry_rpcs_refuse_the_wrong_callers(
    server: Server, http: httpx.Client, world: Builds, case: Case
) -> None:
    request = case.make(world)
    for label, token, expected in [
        ("no token", None, "unauthenticated"),
        ("unknown token", "odp_" + "x" * 43, "unauthenticated"),
        ("another organization's token", world.other_org_token, "permission_denied"),
        ("another project's token", world.other_project_token, "permission_denied"),
        ("a build token", world.build_token, "permission_denied"),
    ]:
        reply = call(http, server.url, case.path, request, token)
        assert reply.code == expected, (label, reply.status, reply.body[:200])
        assert reply.error["message"]
    unknown = type(request)(project_id="zzzzzzzzzz")
    reply = call(http, server.url, case.path, unknown, world.org_token)
    assert reply.code == "not_found" and "zzzzzzzzzz" in reply.error["message"]


def test_registry_rpc_field_errors(server: Server, http: httpx.Client, world: Builds) -> None:
    registry = "depot.build.v1.RegistryService"
    cases: list[tuple[str, Message[Any], str, str]] = [
        (f"{registry}/ListImages", reg.ListImagesRequest(), "invalid_argument", "project_id"),
        (
            f"{registry}/ListImages",
            reg.ListImagesRequest(project_id=world.project, page_token="junk"),
            "invalid_argument",
            "page_token",
        ),
        (
            f"{registry}/DeleteImage",
            reg.DeleteImageRequest(project_id=world.project),
            "invalid_argument",
            "image_tags",
        ),
        (
            f"{registry}/DeleteImage",
            reg.DeleteImageRequest(project_id=world.project, image_tags=[" "]),
            "invalid_argument",
            "image_tags",
        ),
        (
            f"{registry}/DeleteImage",
            reg.DeleteImageRequest(project_id=world.project, image_tags=["nope"]),
            "not_found",
            "nope",
        ),
        (
            f"{registry}/DeleteImage",
            reg.DeleteImageRequest(project_id=world.project, image_tags=["zzzzzzzzzz:latest"]),
            "invalid_argument",
            "repository",
        ),
        (f"{BS}/GetPullToken", cli.GetPullTokenRequest(), "invalid_argument", "project_id"),
        (f"{BS}/GetPullToken", cli.GetPullTokenRequest(build_id="zzzzzzzzzz"), "not_found", "zzzzzzzzzz"),
    ]
    for path, request, code, needle in cases:
        reply = call(http, server.url, path, request, world.org_token)
        assert reply.code == code and needle in reply.error["message"], (path, reply.body[:200])
