"""The check that refuses a NUL character in any string of a request, naming where it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from protobuf import Message, Oneof

from opendepot.api.nul import NoNulInStrings, nul_field
from opendepot.errors import InvalidArgument
from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.gen.depot.core.v1 import project_pb as pb
from opendepot.gen.moby.buildkit.v1 import control_pb


def create_build(*, tag: str = "app:1", attribute: str = "v", key: str = "k") -> cli.CreateBuildRequest:
    options = [
        cli.BuildOptions(tags=["one"], target_name="t"),
        cli.BuildOptions(
            tags=["two", tag],
            outputs=[cli.BuildOutput(kind="image", attributes={"name": "x", key: attribute})],
        ),
    ]
    return cli.CreateBuildRequest(project_id="p", options=options)


def github(owner: str) -> Oneof[Literal["github"], pb.TrustPolicy.GitHub]:
    return Oneof("github", pb.TrustPolicy.GitHub(repository_owner=owner, repository="web"))


def test_a_clean_request_passes() -> None:
    assert nul_field(create_build()) is None
    assert nul_field(pb.ListProjectsRequest()) is None
    # Only the chosen member of a oneof is read.
    assert nul_field(pb.AddTrustPolicyRequest(project_id="p", provider=github(owner="o"))) is None


@pytest.mark.parametrize(
    ("request_", "where"),
    [
        (cli.CreateBuildRequest(project_id="p\x00"), "project_id"),
        (create_build(tag="a\x00"), "options[1].tags[1]"),
        (create_build(attribute="\x00"), "options[1].outputs[0].attributes['k']"),
        (create_build(key="k\x00"), "options[1].outputs[0].attributes['k\\x00']"),
        (
            pb.AddTrustPolicyRequest(project_id="p", provider=github(owner="o\x00")),
            "github.repository_owner",
        ),
        (cli.ReportStatusStreamRequest(build_id="b", stable_digests={"d": "\x00"}), "stable_digests['d']"),
    ],
)
def test_a_nul_is_found_and_named_by_its_path(request_: Message[Any], where: str) -> None:
    assert nul_field(request_) == where


def test_buildkit_status_messages_are_left_to_the_step_recorder() -> None:
    vertex = control_pb.Vertex(digest="sha256:a", name="RUN printf '\x00'", error="\x00")
    request = cli.ReportStatusStreamRequest(
        build_id="b", statuses=[control_pb.StatusResponse(vertexes=[vertex])]
    )
    assert nul_field(request) is None


def test_the_interceptor_refuses_before_the_handler_for_every_kind_of_method() -> None:
    check = NoNulInStrings()
    handled: list[Any] = []

    async def unary(request: Any, _ctx: Any) -> str:
        handled.append(request)
        return "answer"

    async def server_stream(request: Any, _ctx: Any) -> AsyncIterator[str]:
        handled.append(request)
        yield "answer"

    async def client_stream(requests: AsyncIterator[Any], _ctx: Any) -> int:
        return len([r async for r in requests])

    async def stream_of(*messages: Any) -> AsyncIterator[Any]:
        for message in messages:
            yield message

    async def main() -> None:
        good, bad = cli.GetBuildRequest(build_id="b"), cli.GetBuildRequest(build_id="b\x00")
        assert await check.intercept_unary(unary, good, None) == "answer"
        with pytest.raises(InvalidArgument, match="build_id: must not contain a NUL character"):
            await check.intercept_unary(unary, bad, None)
        assert [a async for a in check.intercept_server_stream(server_stream, good, None)] == ["answer"]
        with pytest.raises(InvalidArgument, match="build_id"):
            [a async for a in check.intercept_server_stream(server_stream, bad, None)]
        assert handled == [good, good]  # the bad requests never reached a handler
        assert await check.intercept_client_stream(client_stream, stream_of(good, good), None) == 2
        with pytest.raises(InvalidArgument, match="build_id"):
            await check.intercept_client_stream(client_stream, stream_of(good, bad), None)

    asyncio.run(main())
