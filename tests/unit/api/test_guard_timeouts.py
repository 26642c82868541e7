"""A request stream's body has a time limit, as a unary body has. FinishLogin (public, server streaming: its
request is one message) used to wait forever for a body that never ends: anonymous callers held thousands of
connections open with a few bytes each. Driven at the ASGI seam, through the guard into the Connect codec,
with a receive() that stops sending and short limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

from opendepot.api.guard import STATUS_STREAM, Guard, Limits
from opendepot.api.rpc.services import request_stream_paths
from opendepot.auth import Principal
from opendepot.gen.depot.cli.v1 import build_connect, build_pb
from opendepot.gen.depot.cli.v1beta1 import login_connect, login_pb

FINISH_LOGIN = "/depot.cli.v1beta1.LoginService/FinishLogin"
LIMITS = Limits(body_timeout=0.3, stream_idle_timeout=0.5)


def envelope(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class _Login:
    async def start_login(self, request: Any, ctx: Any) -> Any:
        raise AssertionError("not called")

    async def finish_login(self, request: Any, ctx: Any) -> AsyncIterator[login_pb.FinishLoginResponse]:
        yield login_pb.FinishLoginResponse()


class _Builds:
    """Reads the status stream to its end, counting messages."""

    received = 0

    def __getattr__(self, name: str) -> Any:
        return None  # the application looks up every method; only the stream is called

    async def report_status_stream(
        self, request: AsyncIterator[build_pb.ReportStatusStreamRequest], ctx: Any
    ) -> build_pb.ReportStatusStreamResponse:
        async for _message in request:
            _Builds.received += 1
        return build_pb.ReportStatusStreamResponse()


async def _anyone(authorization: str | None) -> Principal:
    return cast(Principal, object())


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/connect+proto"), (b"authorization", b"Bearer x")],
        "extensions": {"http.response.trailers": {}},
    }


async def _call(path: str, app: Any, chunks: list[tuple[float, bytes]], guard: Guard) -> tuple[float, bytes]:
    """Sends each chunk after its pause, then nothing more (the body never ends); the seconds until the
    response ended, and its body."""
    pending = list(chunks)
    sent: list[bytes] = []
    ended = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            pause, chunk = pending.pop(0)
            await asyncio.sleep(pause)
            return {"type": "http.request", "body": chunk, "more_body": True}
        await ended.wait()  # a stalled client: nothing until the server is done
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))
            if not message.get("more_body"):
                ended.set()

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(guard(_scope(path), receive, send, app), timeout=10)
    return loop.time() - started, b"".join(sent)


def _end_error(body: bytes) -> dict[str, Any]:
    """The error of a Connect stream's end message."""
    assert body[0] == 0x02, body
    return cast(dict[str, Any], json.loads(body[5:])["error"])


def test_a_one_message_stream_request_must_arrive_whole_within_the_body_timeout() -> None:
    app = login_connect.LoginServiceASGIApplication(cast(Any, _Login()))
    guard = Guard(_anyone, LIMITS, request_streams={STATUS_STREAM})
    # Four bytes of an envelope header, then silence: answered at the deadline, not held open.
    took, body = asyncio.run(_call(FINISH_LOGIN, app, [(0.0, b"\x00\x00\x00\x00")], guard))
    assert _end_error(body)["code"] == "deadline_exceeded"
    assert 0.25 < took < 2
    # Sending a byte now and then does not move the deadline: it is for the whole body.
    drip = [(0.0, b"\x00\x00\x00\x00\x40")] + [(0.1, b"\x08")] * 30
    took, body = asyncio.run(_call(FINISH_LOGIN, app, drip, guard))
    assert _end_error(body)["code"] == "deadline_exceeded"
    assert 0.25 < took < 1


def test_a_request_stream_may_outlast_the_body_timeout_but_not_stay_idle() -> None:
    app = build_connect.BuildServiceASGIApplication(cast(Any, _Builds()))
    guard = Guard(_anyone, LIMITS, request_streams={STATUS_STREAM})
    message = envelope(build_pb.ReportStatusStreamRequest(build_id="b").to_binary())
    # A message every 0.2 s for 1.2 s (four times the body timeout), then silence.
    _Builds.received = 0
    took, body = asyncio.run(_call(STATUS_STREAM, app, [(0.2, message)] * 6, guard))
    assert _Builds.received == 6
    assert _end_error(body)["code"] == "deadline_exceeded"
    assert 1.2 + 0.45 < took < 3


def test_the_request_streams_are_the_client_streaming_methods() -> None:
    assert request_stream_paths() == {STATUS_STREAM, "/depot.buildkit.v1.BuildKitService/ReportHealth"}
