"""The approval page a `depot login` prints, at `/login/<id>`: approve with an organization token."""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from opendepot.api.deps import Deps
from opendepot.api.http.asgi import Receive, Scope, Send, read_body
from opendepot.errors import DomainError
from opendepot.logins import service as logins


def login_page(login_id: str, message: str = "", done: bool = False) -> str:
    """The approval page a `depot login` prints. Approving takes an organization token: the login then
    receives a user token of that organization."""
    safe_id = html.escape(login_id)
    head = "<!doctype html><html><head><meta charset='utf-8'><title>Approve depot login</title></head><body>"
    if done:
        return f"{head}<h1>Login approved</h1><p>{html.escape(message)}</p></body></html>"
    note = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    return (
        f"{head}<h1>Approve depot login</h1>{note}"
        "<p>A <code>depot login</code> is waiting for approval. Paste an organization token to give it a "
        "user token of that organization, or run <code>opendepot login approve "
        f"{safe_id}</code> on the server.</p>"
        f"<form method='post' action='/login/{safe_id}'>"
        "<label>Organization token <input type='password' name='token' autocomplete='off' size='60'></label> "
        "<button type='submit'>Approve</button></form></body></html>"
    )


class LoginPage:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        login_id = scope["path"].removeprefix("/login/")
        status, page = 200, ""
        try:
            if scope["method"] == "POST":
                body = await read_body(receive) or b""
                token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
                principal = await self.d.authn.from_secret(token) if token else None
                if principal is None:
                    status, page = 400, login_page(login_id, "Paste an organization token.")
                else:
                    await self.d.store.run(lambda s: logins.approve_with_token(s, login_id, principal))
                    page = login_page(
                        login_id, "You can close this page; depot login will finish.", done=True
                    )
            else:
                await self.d.store.read(lambda s: logins.pending(s, login_id))
                page = login_page(login_id)
        except DomainError as exc:
            status, page = 403 if scope["method"] == "POST" else 404, login_page(login_id, exc.message)
        body = page.encode()
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"content-security-policy", b"default-src 'none'; form-action 'self'"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
