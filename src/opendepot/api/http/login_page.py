"""The approval page a `depot login` prints, at `/login/<id>`: approve with an organization token."""

from __future__ import annotations

import html
import logging
from urllib.parse import parse_qs

from opendepot.api.deps import Deps
from opendepot.api.http.asgi import Receive, Scope, Send, read_body
from opendepot.clock import as_utc
from opendepot.errors import DomainError
from opendepot.logins import service as logins
from opendepot.logins.models import LoginRequest

log = logging.getLogger("opendepot.login")


def login_page(login: LoginRequest | None, approval_id: str, message: str = "", done: bool = False) -> str:
    """The approval page a `depot login` prints. It shows the request's code, origin and time; approving
    takes an explicit confirmation of those and an organization token: the login then receives a user token
    of that organization."""
    head = "<!doctype html><html><head><meta charset='utf-8'><title>Approve depot login</title></head><body>"
    if done:
        return f"{head}<h1>Login approved</h1><p>{html.escape(message)}</p></body></html>"
    note = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    if login is None:
        return f"{head}<h1>Approve depot login</h1>{note}</body></html>"
    safe_id = html.escape(approval_id)
    code = html.escape(login.user_code or "")
    origin = html.escape(login.origin or "unknown")
    started = html.escape(as_utc(login.created_at).strftime("%Y-%m-%d %H:%M:%S UTC"))
    expires = html.escape(as_utc(login.expires_at).strftime("%H:%M:%S UTC"))
    return (
        f"{head}<h1>Approve depot login</h1>{note}"
        "<p>A <code>depot login</code> is waiting for approval. Approve it only if you started it yourself, "
        "just now, from this place:</p>"
        f"<dl><dt>Code</dt><dd><strong>{code}</strong></dd><dt>From</dt><dd>{origin}</dd>"
        f"<dt>Started</dt><dd>{started} (expires {expires})</dd></dl>"
        f"<form method='post' action='/login/{safe_id}'>"
        f"<p><label><input type='checkbox' name='confirm' value='{code}' required> I started this login, "
        f"code {code}, from {origin} at {started}</label></p>"
        "<p><label>Organization token <input type='password' name='token' autocomplete='off' size='60'>"
        "</label> <button type='submit'>Approve</button></p></form>"
        f"<p>Or run <code>opendepot login approve {safe_id}</code> on the server.</p></body></html>"
    )


# Secrets pass through this page (the organization token pasted in): never cached, framed or referred.
PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]


class LoginPage:
    def __init__(self, deps: Deps) -> None:
        self.d = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        approval_id = scope["path"].removeprefix("/login/")
        status, page = 200, ""
        login: LoginRequest | None = None
        try:
            login = await self.d.store.read(lambda s: logins.awaiting_approval(s, approval_id))
            if scope["method"] == "POST":
                form = parse_qs((await read_body(receive) or b"").decode("utf-8", "replace"))
                token = (form.get("token") or [""])[0].strip()
                confirmed = (form.get("confirm") or [""])[0]
                principal = await self.d.authn.from_secret(token) if token else None
                if principal is None:
                    status, page = 400, login_page(login, approval_id, "Paste an organization token.")
                else:
                    approved = await self.d.store.run(
                        lambda s: logins.approve_with_token(s, approval_id, principal, confirmed)
                    )
                    log.info(
                        "login %s approved for organization %s by token %s (origin %s)",
                        approved.user_code,
                        approved.approved_organization_id,
                        approved.approved_by,
                        approved.origin,
                    )
                    page = login_page(
                        approved, approval_id, "You can close this page; depot login will finish.", done=True
                    )
            else:
                page = login_page(login, approval_id)
        except DomainError as exc:
            status = 404 if login is None else 403
            page = login_page(login, approval_id, exc.message)
        body = page.encode()
        headers = [*PAGE_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
