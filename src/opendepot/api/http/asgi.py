"""Small helpers for the plain HTTP endpoints beside the RPCs (registry token service and notifications,
the login page): reading a bounded body, answering JSON, reading a header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opendepot.errors import InvalidArgument

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_BODY = 1024 * 1024
# An incomplete request body (a client that stops sending) is dropped after this long: Hypercorn runs
# without a read timeout, so nothing else would ever let go of it.
BODY_READ_TIMEOUT_SECONDS = 30.0


class BodyTimedOut(InvalidArgument):
    """The client did not send the whole request body within the time limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__("request body", f"not complete within {seconds:g}s")


async def read_body(
    receive: Receive, limit: int = MAX_BODY, seconds: float = BODY_READ_TIMEOUT_SECONDS
) -> bytes | None:
    """The request body, or None when it is larger than limit; BodyTimedOut when it is not all there
    within seconds."""
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                body += message.get("body", b"")
                if len(body) > limit:
                    return None
                if not message.get("more_body"):
                    return bytes(body)
    except TimeoutError:
        raise BodyTimedOut(seconds) from None


async def respond_json(
    send: Send, status: int, payload: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""
