"""The registry's token service and notifications read their bodies within a time limit, and a token
request's form is small. They are served beside the guard: a body that never finished was waited for
forever, and 300 anonymous stalled 1 MiB token requests pinned 350 MiB."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

from opendepot.api.http.registry import TOKEN_FORM_LIMIT, RegistryEndpoints

SECRET = "events-secret"


def _scope(path: str, authorization: bytes = b"") -> dict[str, Any]:
    headers = [(b"content-type", b"application/x-www-form-urlencoded")]
    if authorization:
        headers.append((b"authorization", authorization))
    return {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": headers}


async def _call(
    handler: Any, scope: dict[str, Any], chunks: list[bytes], stall: bool
) -> tuple[float, int, bytes]:
    """Sends chunks (then, when stall, nothing more); the seconds until the answer, its status and body."""
    pending = list(chunks)
    answered = asyncio.Event()
    status, body = 0, b""

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body += message.get("body", b"")
            answered.set()

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(handler(scope, receive, send), timeout=10)
    return loop.time() - started, status, body


def _endpoints() -> RegistryEndpoints:
    registry = SimpleNamespace(signer=SimpleNamespace(events_secret=SECRET))
    return RegistryEndpoints(cast(Any, None), cast(Any, registry), body_timeout=0.3)


def test_a_token_request_body_that_never_ends_is_answered_408() -> None:
    endpoints = _endpoints()
    took, status, body = asyncio.run(
        _call(endpoints.token, _scope("/registry/token"), [b"grant_type=password&"], stall=True)
    )
    assert status == 408, body
    assert json.loads(body)["errors"][0]["code"] == "TIMEOUT"
    assert 0.25 < took < 2


def test_a_token_request_form_is_small() -> None:
    endpoints = _endpoints()
    # Checked while it arrives, before anything is authenticated.
    chunks = [b"scope=" + b"a" * (16 * 1024)] * 8
    _took, status, _body = asyncio.run(_call(endpoints.token, _scope("/registry/token"), chunks, stall=True))
    assert status == 413
    assert 64 * len("scope=repository%3A" + "a" * 255 + "%3Apull%2Cpush%2Cdelete&") <= TOKEN_FORM_LIMIT


def test_a_notification_body_that_never_ends_is_answered_408() -> None:
    endpoints = _endpoints()
    scope = _scope("/registry/events", f"Bearer {SECRET}".encode())
    took, status, _body = asyncio.run(_call(endpoints.events, scope, [b'{"events": ['], stall=True))
    assert status == 408
    assert 0.25 < took < 2
