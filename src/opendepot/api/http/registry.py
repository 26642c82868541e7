"""The registry's two HTTP endpoints on the API port.

`/registry/token`: the token service of distribution's token auth. Clients send an opendepot token as the
password (any user name; Depot's clients use `x-token`), by GET with Basic auth or by the OAuth2 password
grant (POST form); the answer is a registry JWT carrying what that token may do (registry/service.grant).

`/registry/events`: the registry's notifications, authorized by a secret only the registry knows."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from opendepot.api.auth import Authenticator
from opendepot.api.http.asgi import (
    BODY_READ_TIMEOUT_SECONDS,
    MAX_BODY,
    BodyTimedOut,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    respond_json,
)
from opendepot.auth import Principal
from opendepot.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from opendepot.metrics import metrics
from opendepot.registry.operations import Registry

# A token request's form: grant_type, service, client_id, username, the password (an opendepot token) or a
# refresh token, and at most 64 scopes (registry.operations.MAX_SCOPES) of ~290 characters at their longest
# (`repository:` + a 255-character name + `:pull,push,delete`), ~40 KiB once percent-encoded. Anonymous
# callers send it, and it is only authenticated once read.
TOKEN_FORM_LIMIT = 64 * 1024
NOTIFICATION_LIMIT = 16 * MAX_BODY


async def _slow_body(send: Send, error: BodyTimedOut) -> None:
    """408 for a body not sent in time; the connection is not reused (its body was left unread)."""
    await respond_json(
        send, 408, {"errors": [{"code": "TIMEOUT", "message": error.message}]}, [(b"connection", b"close")]
    )


def basic_password(authorization: str) -> str | None:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() != "basic":
        return None
    try:
        _user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if sep and password else None


class RegistryEndpoints:
    def __init__(
        self, authn: Authenticator, registry: Registry, body_timeout: float = BODY_READ_TIMEOUT_SECONDS
    ) -> None:
        self.authn = authn
        self.registry = registry
        self.body_timeout = body_timeout

    async def _principal(self, secret: str | None) -> Principal | None:
        if not secret:
            return None
        try:
            return await self.authn.from_secret(secret)
        except Unauthenticated:
            return None

    async def token(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["method"] == "POST":
            try:
                body = await read_body(receive, TOKEN_FORM_LIMIT, self.body_timeout)
            except BodyTimedOut as exc:
                await _slow_body(send, exc)
                return
            if body is None:
                message = f"a token request is at most {TOKEN_FORM_LIMIT} bytes"
                await respond_json(send, 413, {"errors": [{"code": "TOOLARGE", "message": message}]})
                return
            form = parse_qs(body.decode("utf-8", "replace"))
            passwords = form.get("password") if form.get("grant_type") == ["password"] else None
            secret = passwords[0] if passwords else None
            scopes = [s for value in form.get("scope", []) for s in value.split(" ")]
        elif scope["method"] == "GET":
            secret = basic_password(header(scope, b"authorization"))
            scopes = query.get("scope", [])
        else:
            await respond_json(send, 405, {"errors": [{"code": "UNSUPPORTED", "message": "use GET or POST"}]})
            return
        principal = await self._principal(secret)
        if principal is None:
            await respond_json(
                send,
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "send an opendepot token as the password"}]},
                [(b"www-authenticate", b'Basic realm="opendepot registry"')],
            )
            return
        try:
            token, issued, expires_in = await self.registry.token(principal, scopes)
        except InvalidArgument as exc:
            await respond_json(send, 400, {"errors": [{"code": "DENIED", "message": exc.message}]})
            return
        except ResourceExhausted as exc:
            # Distribution's own code for a refused access; clients show the message.
            await respond_json(send, 403, {"errors": [{"code": "DENIED", "message": exc.message}]})
            return
        await respond_json(
            send,
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": expires_in,
                "issued_at": issued.isoformat().replace("+00:00", "Z"),
            },
        )

    async def events(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = f"Bearer {self.registry.signer.events_secret}"
        if scope["method"] != "POST" or not hmac.compare_digest(
            header(scope, b"authorization").encode(), expected.encode()
        ):
            await respond_json(send, 401, {"error": "not the registry"})
            return
        try:
            body = await read_body(receive, NOTIFICATION_LIMIT, self.body_timeout)
        except BodyTimedOut as exc:
            await _slow_body(send, exc)
            return
        try:
            envelope = json.loads(body or b"")
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            await respond_json(send, 400, {"error": "expected a notification envelope"})
            return
        # Answer first: the registry holds the client's request until its notification sink returns, so a
        # push would otherwise wait for the image's size to be read back.
        await respond_json(send, 202, {"accepted": len(envelope.get("events") or [])})
        metrics().registry_pushes.inc(manifest_pushes(envelope))
        await self.registry.record(envelope)


def manifest_pushes(envelope: dict[str, Any]) -> int:
    """Pushes of manifests (not blobs) among a notification's events."""
    events = envelope.get("events") or []
    return sum(
        1
        for event in events
        if isinstance(event, dict)
        and event.get("action") == "push"
        and "manifest" in str((event.get("target") or {}).get("mediaType", ""))
    )
