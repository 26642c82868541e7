"""The ASGI application's front door: /healthz, the plain HTTP endpoints, the shared build page, and every
Connect service path (spec §3) to that service's application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from connectrpc.server import ConnectASGIApplication

from opendepot.api.guard import Guard
from opendepot.api.http.asgi import Receive, Scope, Send, respond_json

# A plain HTTP endpoint beside the RPCs (the registry's token service and notifications).
HttpHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class Router:
    """Dispatches `/<package>.<Service>/<Method>` to that service's Connect application."""

    def __init__(
        self,
        apps: list[ConnectASGIApplication[Any]],
        methods: set[str],
        health: Callable[[], Awaitable[bool]],
        shared_page: Callable[[str], Awaitable[str | None]],
        routes: Mapping[str, HttpHandler] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._guard = guard
        self._shared_page = shared_page
        self._routes = dict(routes or {})
        self._apps = {app.path: app for app in apps}
        self._methods = methods
        self._health = health

    @property
    def service_paths(self) -> list[str]:
        return sorted(self._apps)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if "\x00" in path:
            # No route has one; the pages behind a prefix (the login page) would look it up in the store,
            # where PostgreSQL refuses it with an internal error.
            await respond_json(send, 404, {"code": "not_found", "message": "no such path"})
            return
        if path == "/healthz":
            ok = await self._health()
            await respond_json(send, 200 if ok else 503, {"status": "ok" if ok else "unavailable"})
            return
        route = self._routes.get(path) or next(
            (r for prefix, r in self._routes.items() if prefix.endswith("/") and path.startswith(prefix)),
            None,
        )
        if route is not None:
            await route(scope, receive, send)
            return
        if scope["method"] == "GET" and path.startswith("/shared/"):
            page = await self._shared_page(path.removeprefix("/shared/"))
            body = (page or "<!doctype html><p>This link is unknown or no longer shared.</p>").encode()
            # The URL is the share secret: not cached, not sent on as a referrer, not framed.
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
                (
                    b"content-security-policy",
                    b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                ),
                (b"x-frame-options", b"DENY"),
                (b"x-content-type-options", b"nosniff"),
            ]
            await send({"type": "http.response.start", "status": 200 if page else 404, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        service = "/" + path.lstrip("/").split("/", 1)[0]
        app = self._apps.get(service)
        if app is not None and path in self._methods:
            if self._guard is None:
                await app(scope, receive, send)
            else:
                await self._guard(scope, receive, send, app)
            return
        # Connect clients read the code from the body; 404 is the HTTP fallback for unimplemented.
        await respond_json(
            send, 404, {"code": "unimplemented", "message": f"no such service or method: {path}"}
        )
