"""The little HTTP the dashboard needs on raw ASGI: a request (query, cookies, bounded form) and responses
that always carry the security headers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote, unquote_plus

from opendepot.api.http.asgi import Receive, Scope, Send, read_body

MAX_FORM_BYTES = 64 * 1024
# Everything from this server, nothing inline, nothing framed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


@dataclass
class Request:
    scope: Scope
    receive: Receive
    params: dict[str, str] = field(default_factory=dict)
    # The configured public URL's origin (scheme://host[:port]): behind a proxy that ends TLS, the browser's
    # origin is that, while this server sees plain HTTP.
    public_origin: str = ""

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def secure(self) -> bool:
        """Cookies get the Secure flag: the request came over TLS, or the server's public URL is HTTPS."""
        return self.scope.get("scheme") == "https" or self.public_origin.startswith("https://")

    def header(self, name: str) -> str:
        key = name.lower().encode()
        for k, v in self.scope.get("headers", []):
            if k.lower() == key:
                return bytes(v).decode("latin-1")
        return ""

    def has_nul(self) -> bool:
        """A NUL character in the path or the query, percent-encoded or not."""
        query = unquote_plus(bytes(self.scope.get("query_string", b"")).decode("latin-1"))
        return "\x00" in self.path or "\x00" in query

    def query(self, name: str, default: str = "") -> str:
        raw = bytes(self.scope.get("query_string", b"")).decode("latin-1")
        values = parse_qs(raw).get(name)
        return values[0] if values else default

    def cookie(self, name: str) -> str:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.header("cookie"))
        except Exception:
            return ""
        morsel = jar.get(name)
        return morsel.value if morsel is not None else ""

    async def form(self) -> dict[str, str] | None:
        """The url-encoded form; None when it is too large."""
        body = await read_body(self.receive, MAX_FORM_BYTES)
        if body is None:
            return None
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def same_origin(self) -> bool:
        """A change must come from a page of this server: when the browser names an Origin, it is ours."""
        origin = self.header("origin")
        if not origin:
            return True
        host = self.header("host") or self.header(":authority")
        scheme = "https" if self.scope.get("scheme") == "https" else "http"
        return origin == f"{scheme}://{host}" or (bool(self.public_origin) and origin == self.public_origin)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def set_cookie(self, name: str, value: str, *, secure: bool, max_age: int | None = None) -> None:
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if secure:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self.headers.append((b"set-cookie", "; ".join(parts).encode()))

    async def send(self, send: Send, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            *SECURITY_HEADERS,
            *self.headers,
            *extra,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def html(body: str, status: int = 200) -> Response:
    return Response(status, body.encode(), headers=[(b"cache-control", b"no-store")])


def json_response(payload: Any, status: int = 200) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, "application/json", [(b"cache-control", b"no-store")])


def redirect(location: str) -> Response:
    return Response(303, b"", headers=[(b"location", location.encode()), (b"cache-control", b"no-store")])


def sign_in_url(next_path: str) -> str:
    return f"/sign-in?next={quote(next_path, safe='/')}"
