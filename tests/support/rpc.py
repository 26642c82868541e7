"""Connect unary calls made by hand over HTTP/1.1, to check the wire exactly (codes, statuses, bodies)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from protobuf import Message

M = TypeVar("M", bound=Message[Any])


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str

    @property
    def error(self) -> dict[str, Any]:
        assert self.content_type.startswith("application/json"), (self.status, self.body[:200])
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def code(self) -> str:
        return "ok" if self.status == 200 else str(self.error["code"])

    def message(self, cls: type[M]) -> M:
        assert self.status == 200, (self.status, self.body[:300])
        return cls.from_binary(self.body)


def call(
    client: httpx.Client,
    base: str,
    path: str,
    body: bytes | Message[Any],
    token: str | None = None,
    *,
    content_type: str = "application/proto",
    headers: dict[str, str] | None = None,
) -> Reply:
    raw = body if isinstance(body, bytes) else body.to_binary()
    h = {"content-type": content_type, "connect-protocol-version": "1", **(headers or {})}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    r = client.post(f"{base}/{path.lstrip('/')}", content=raw, headers=h)
    return Reply(status=r.status_code, body=r.content, content_type=r.headers.get("content-type", ""))
