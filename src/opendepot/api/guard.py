"""The layer in front of the Connect codec: every RPC passes here before a byte of its body is read.

It checks what a hostile caller controls before anything expensive or fragile runs on it:
- headers (and the query string) must be UTF-8; anything else is `invalid_argument`, not a 500;
- the caller is authenticated from the Authorization header first (only the login RPCs are public), and the
  principal is put on the call so handlers never look it up again;
- bodies are bounded per method (small for unary RPCs, the status stream its own size), read within a time
  limit, and decompressed only up to that same bound: for the two public (login) RPCs that is 16 KiB, so an
  unauthenticated caller never gets more than 16 KiB decompressed (clients such as connect-python gzip
  every message by default, so refusing gzip outright would lock them out of `depot login`);
- JSON is refused when nested deeper than MAX_JSON_DEPTH, before the decoder sees it (a deep enough document
  crashes the native protobuf JSON decoder, taking the whole worker down).
Every refusal is a Connect error in the caller's own protocol and one log line."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from opendepot.auth import Principal
from opendepot.clock import utcnow
from opendepot.errors import DomainError
from opendepot.metrics import metrics

from .errors import CODES
from .http.asgi import BODY_READ_TIMEOUT_SECONDS, Receive, Scope, Send

log = logging.getLogger("opendepot.rpc")

# Nesting beyond this is refused before decoding. No request of the API nests deeper than ~6 levels.
MAX_JSON_DEPTH = 64
# A unary request body, after decompression: the largest legitimate ones (build options) are a few KiB.
UNARY_BODY_LIMIT = 4 * 1024 * 1024
# Unauthenticated (public) RPCs: StartLogin and FinishLogin carry an id at most.
PUBLIC_BODY_LIMIT = 16 * 1024
# One message of a request stream, and a whole request stream.
STREAM_MESSAGE_LIMIT = 4 * 1024 * 1024
STREAM_TOTAL_LIMIT = 64 * 1024 * 1024
# The CLI's build status stream carries raw build logs: larger messages, a larger total.
STATUS_STREAM = "/depot.cli.v1.BuildService/ReportStatusStream"
STATUS_MESSAGE_LIMIT = 16 * 1024 * 1024
STATUS_TOTAL_LIMIT = 256 * 1024 * 1024
# A refused request's unread body is read and dropped up to this size, so the connection stays usable.
DRAIN_LIMIT = 1024 * 1024
DRAIN_SECONDS = 1.0
DRAIN_SECONDS_H2 = 5.0
H2_DRAIN_LIMIT = 1024 * 1024 * 1024
# An incomplete request body (a client that stops sending) is dropped after BODY_READ_TIMEOUT_SECONDS (the
# plain HTTP endpoints' too). It holds for every request that is one message: unary ones and those of
# server-streaming RPCs (FinishLogin, GetEndpoint).
# A request stream (client streaming: ReportStatusStream, open for a whole build) has no overall deadline,
# and may pause as long as a build may run (--build-timeout; none by default): the depot CLI sends statuses
# only when it has some, so a quiet RUN step sends nothing for as long as it runs. Only an authenticated
# caller opens one, each bounded in bytes.

PUBLIC_METHODS = frozenset(
    {"/depot.cli.v1beta1.LoginService/StartLogin", "/depot.cli.v1beta1.LoginService/FinishLogin"}
)

HTTP_STATUS = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "unimplemented": 404,
    "failed_precondition": 400,
    "resource_exhausted": 429,
    "deadline_exceeded": 408,
    "unavailable": 503,
}
GRPC_CODES = {
    "invalid_argument": 3,
    "deadline_exceeded": 4,
    "not_found": 5,
    "permission_denied": 7,
    "resource_exhausted": 8,
    "failed_precondition": 9,
    "unimplemented": 12,
    "unavailable": 14,
    "unauthenticated": 16,
}

# The principal the guard resolved for this request; the interceptor puts it on the call.
authenticated: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "opendepot_authenticated", default=None
)


class Refused(Exception):
    """A request the guard turns away: a Connect code and a message safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    unary_body: int = UNARY_BODY_LIMIT
    public_body: int = PUBLIC_BODY_LIMIT
    stream_message: int = STREAM_MESSAGE_LIMIT
    stream_total: int = STREAM_TOTAL_LIMIT
    per_method_stream: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: {STATUS_STREAM: (STATUS_MESSAGE_LIMIT, STATUS_TOTAL_LIMIT)}
    )
    json_depth: int = MAX_JSON_DEPTH
    body_timeout: float = BODY_READ_TIMEOUT_SECONDS
    stream_idle_timeout: float | None = None

    def stream(self, path: str) -> tuple[int, int]:
        return self.per_method_stream.get(path, (self.stream_message, self.stream_total))

    @property
    def largest_message(self) -> int:
        """What the codec itself may accept: the guard has already held each method to its own bound."""
        return max(self.unary_body, self.stream_message, *(m for m, _t in self.per_method_stream.values()))


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(document: bytes, limit: int) -> bool:
    """Whether document nests arrays/objects deeper than limit. Counting brackets first keeps the common
    case (a flat request) to two C-level scans."""
    if document.count(b"[") + document.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", document).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Every gzip member of data (as the codec would read them), at most limit bytes in all. The codec is
    only ever given what this returns: a check of the first member alone would let a second one through
    unseen (the JSON nesting that crashes the decoder, or a bomb past the bound)."""
    if not data:  # the codec reads an empty compressed message as an empty message
        return b""
    parts: list[bytes] = []
    total = 0
    rest = data
    while True:
        decompressor = zlib.decompressobj(wbits=31)
        try:
            out = decompressor.decompress(rest, limit + 1 - total)
        except zlib.error as exc:
            raise Refused("invalid_argument", "request body: not valid gzip") from exc
        total += len(out)
        if total > limit:
            raise Refused("resource_exhausted", f"request body: larger than {limit} bytes once decompressed")
        if not decompressor.eof:
            raise Refused("invalid_argument", "request body: truncated gzip")
        parts.append(out)
        rest = decompressor.unused_data
        if not rest:
            return b"".join(parts)


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-cased header names to their last value; anything that is not UTF-8 is refused here, where
    the codec would raise on it as an internal error."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        try:
            name, value = bytes(raw_name).decode().lower(), bytes(raw_value).decode()
        except UnicodeDecodeError:
            raise Refused("invalid_argument", "a request header is not valid UTF-8") from None
        headers[name] = value
    try:
        bytes(scope.get("query_string", b"")).decode()
    except UnicodeDecodeError:
        raise Refused("invalid_argument", "the query string is not valid UTF-8") from None
    return headers


@dataclass(frozen=True, slots=True)
class Wire:
    """How the caller speaks, which decides how an error reaches it."""

    kind: str  # "unary" (Connect unary), "connect-stream", "grpc" (also gRPC-Web)
    content_type: str
    json: bool

    @property
    def needs_trailers(self) -> bool:
        return self.kind == "grpc" and not self.content_type.startswith("application/grpc-web")


def wire_of(content_type: str) -> Wire | None:
    base = content_type.split(";", 1)[0].strip().lower()
    if base in ("application/json", "application/proto"):
        return Wire("unary", base, base == "application/json")
    if base in ("application/connect+json", "application/connect+proto"):
        return Wire("connect-stream", base, base.endswith("json"))
    if base.startswith("application/grpc"):
        return Wire("grpc", base, base.endswith("+json"))
    return None


async def refuse(send: Send, wire: Wire | None, refusal: Refused, close: bool = False) -> None:
    """Answers with refusal; close asks an HTTP/1.1 client not to reuse a connection whose request body
    was left unread."""
    code, message = refusal.code, refusal.message
    closing = [(b"connection", b"close")] if close else []
    if wire is None or wire.kind == "unary":
        body = json.dumps({"code": code, "message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *closing,
        ]
        await send({"type": "http.response.start", "status": HTTP_STATUS.get(code, 400), "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if wire.kind == "connect-stream":
        end = json.dumps({"error": {"code": code, "message": message}}).encode()
        body = b"\x02" + len(end).to_bytes(4, "big") + end
        headers = [
            (b"content-type", wire.content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *closing,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    # gRPC and gRPC-Web: a trailers-only response carries the status in its headers.
    headers = [
        (b"content-type", wire.content_type.encode()),
        (b"grpc-status", str(GRPC_CODES.get(code, 3)).encode()),
        (b"grpc-message", quote(message, safe=" ").encode()),
        (b"content-length", b"0"),
        *closing,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def read_bounded(receive: Receive, limit: int, seconds: float) -> bytes:
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise Refused("deadline_exceeded", "request body: the client went away")
                body += message.get("body", b"")
                if len(body) > limit:
                    raise Refused("resource_exhausted", f"request body: larger than {limit} bytes")
                if not message.get("more_body"):
                    return bytes(body)
    except TimeoutError:
        raise Refused("deadline_exceeded", f"request body: not complete within {seconds:g}s") from None


class StreamChecker:
    """Follows the envelopes of a request stream on their way to the codec: sizes, flags, and the nesting
    of JSON messages. A compressed message is held until it is whole, expanded here (up to the message
    bound) and passed on expanded, its flag cleared: the codec decodes exactly what was checked and never
    decompresses anything itself."""

    def __init__(self, message_limit: int, total_limit: int, json_depth: int | None, gzip: bool) -> None:
        self._message_limit = message_limit
        self._total_limit = total_limit
        self._json_depth = json_depth
        self._gzip = gzip
        self._total = 0
        self._header = bytearray()
        self._remaining = 0
        self._compressed = False
        self._message = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """What of the stream so far goes on to the codec."""
        self._total += len(chunk)
        if self._total > self._total_limit:
            raise Refused("resource_exhausted", f"request stream: larger than {self._total_limit} bytes")
        out = bytearray()
        view = memoryview(chunk)
        while view:
            if self._remaining == 0 and len(self._header) < 5:
                take = 5 - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 5:
                    out += self._start_message()
                continue
            take = min(self._remaining, len(view))
            if self._json_depth is not None or self._compressed:
                self._message += view[:take]
            if not self._compressed:
                out += view[:take]
            view = view[take:]
            self._remaining -= take
            if self._remaining == 0:
                out += self._end_message()
        return bytes(out)

    def _start_message(self) -> bytes:
        """The header to pass on now: an uncompressed message's own (a compressed one's comes once it is
        expanded)."""
        flags = self._header[0]
        length = int.from_bytes(self._header[1:5], "big")
        if flags & ~0x01:
            raise Refused("invalid_argument", f"request stream: unknown envelope flags {flags:#x}")
        self._compressed = bool(flags & 0x01)
        if self._compressed and not self._gzip:
            raise Refused(
                "invalid_argument",
                "request stream: a compressed message without negotiated compression",
            )
        if length > self._message_limit:
            raise Refused(
                "resource_exhausted", f"request stream: a message larger than {self._message_limit}"
            )
        self._remaining = length
        header = b"" if self._compressed else bytes(self._header)
        if length == 0:
            return header + self._end_message()
        return header

    def _end_message(self) -> bytes:
        """What to pass on at a message's end: a compressed message, expanded, with its new header."""
        self._header.clear()
        if self._json_depth is None and not self._compressed:
            return b""
        message = bytes(self._message)
        self._message.clear()
        if self._compressed:
            # Expanded here, up to this method's bound (the codec's own bound is the largest of all).
            message = gunzip_bounded(message, self._message_limit)
        if self._json_depth is not None and json_depth_exceeds(message, self._json_depth):
            raise Refused("invalid_argument", f"request message: JSON nested deeper than {self._json_depth}")
        if not self._compressed:
            return b""
        self._compressed = False
        return b"\x00" + len(message).to_bytes(4, "big") + message


Authenticate = Callable[[str | None], Awaitable[Principal]]
Inner = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    def __init__(
        self,
        authenticate: Authenticate,
        limits: Limits | None = None,
        request_streams: Collection[str] = frozenset(),
    ) -> None:
        """request_streams: the paths of methods whose request is a stream of messages (client or bidi
        streaming); any other request is one message, to arrive whole within limits.body_timeout."""
        self._authenticate = authenticate
        self.limits = limits or Limits()
        self._request_streams = frozenset(request_streams)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, inner: Inner) -> None:
        path: str = scope["path"]
        wire: Wire | None = None
        tracked = _TrackedReceive(receive)
        receive = tracked
        try:
            headers = _headers(scope)
            wire = wire_of(headers.get("content-type", ""))
            if scope["method"] != "POST":
                raise Refused("unimplemented", f"{path}: RPCs take POST")
            if wire is None:
                raise Refused("invalid_argument", "content-type: not a Connect, gRPC or gRPC-Web type")
            if wire.needs_trailers and "http.response.trailers" not in scope.get("extensions", {}):
                raise Refused("unimplemented", "gRPC needs HTTP/2; use the Connect protocol over HTTP/1.1")
            public = path in PUBLIC_METHODS
            authenticated.set(None if public else await self._principal(headers.get("authorization")))
            if wire.kind == "unary":
                scope, receive = await self._unary(scope, receive, headers, wire, public)
            else:
                receive = self._stream(scope, receive, headers, wire, public)
        except Refused as refusal:
            _log(path, refusal)
            drained = tracked.complete or await self._drain(scope, tracked)
            await refuse(send, wire, refusal, close=not drained and scope.get("http_version") == "1.1")
            return
        await inner(scope, receive, send)

    async def _drain(self, scope: Scope, receive: _TrackedReceive) -> bool:
        """Reads and drops a little of what is left of a refused request's body, so that an HTTP/1.1
        connection stays usable; past that it is closed instead. (HTTP/2: see DrainBeforeAnswering.)"""
        if scope.get("http_version") == "2":
            return True
        return await _drain(receive, DRAIN_LIMIT, DRAIN_SECONDS)

    async def _principal(self, authorization: str | None) -> Principal:
        try:
            return await self._authenticate(authorization)
        except DomainError as exc:
            raise Refused(CODES[type(exc)].value, exc.message) from None

    async def _unary(
        self, scope: Scope, receive: Receive, headers: dict[str, str], wire: Wire, public: bool
    ) -> tuple[Scope, Receive]:
        limit = self.limits.public_body if public else self.limits.unary_body
        encoding = headers.get("content-encoding", "identity").strip().lower() or "identity"
        if encoding not in ("identity", "gzip"):
            raise Refused("unimplemented", f"content-encoding {encoding!r}: only gzip is supported")
        body = await read_bounded(receive, limit, self.limits.body_timeout)
        if encoding == "gzip" and body:
            body = gunzip_bounded(body, limit)
        if wire.json and json_depth_exceeds(body, self.limits.json_depth):
            depth = self.limits.json_depth
            raise Refused("invalid_argument", f"request body: JSON nested deeper than {depth}")
        # The codec gets the plain body: it need not (and must not) decompress it again.
        plain = [(k, v) for k, v in scope.get("headers", ()) if bytes(k).lower() != b"content-encoding"]
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return {**scope, "headers": plain}, replay

    def _stream(
        self, scope: Scope, receive: Receive, headers: dict[str, str], wire: Wire, public: bool
    ) -> Receive:
        path: str = scope["path"]
        message_limit, total_limit = self.limits.stream(path)
        if public:
            message_limit = total_limit = self.limits.public_body
        name = "grpc-encoding" if wire.kind == "grpc" else "connect-content-encoding"
        encoding = headers.get(name, "identity").strip().lower() or "identity"
        if encoding not in ("identity", "gzip"):
            raise Refused("unimplemented", f"{name} {encoding!r}: only gzip is supported")
        checker = StreamChecker(
            message_limit, total_limit, self.limits.json_depth if wire.json else None, encoding == "gzip"
        )
        # The request body's time limit (Hypercorn has none): one message must arrive whole by a deadline,
        # a stream of them may only pause so long. Once the body is complete, receive() only waits for a
        # disconnect, for as long as the response takes.
        streamed = path in self._request_streams
        idle = self.limits.stream_idle_timeout
        deadline = asyncio.get_running_loop().time() + self.limits.body_timeout
        complete = False

        async def checked() -> dict[str, Any]:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(idle) if streamed else asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                limit = (
                    f"nothing sent for {idle:g}s"
                    if streamed
                    else f"not complete within {self.limits.body_timeout:g}s"
                )
                refusal = Refused("deadline_exceeded", f"request body: {limit}")
                _log(path, refusal)
                # Raised inside the codec's read: it answers with this error, and the unread body closes
                # an HTTP/1.1 connection (HTTP/2: the stream).
                raise _connect_error(refusal) from None
            complete = message["type"] != "http.request" or not message.get("more_body")
            if message["type"] == "http.request":
                try:
                    body = checker.feed(message.get("body", b""))
                except Refused as refusal:
                    _log(path, refusal)
                    if message.get("more_body"):
                        tracked = _TrackedReceive(receive)
                        await self._drain(scope, tracked)
                    raise _connect_error(refusal) from None
                message = {**message, "body": body}
            return message

        return checked


class _TrackedReceive:
    """Remembers whether the request body has been read to its end."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.complete = False

    async def __call__(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            self.complete = True
        return message


async def _drain(receive: _TrackedReceive, limit: int, seconds: float) -> bool:
    """Reads and drops a small unread body so that an HTTP/1.1 connection stays usable after a refusal."""
    seen = 0
    try:
        async with asyncio.timeout(seconds):
            while not receive.complete and seen <= limit:
                seen += len((await receive()).get("body", b""))
    except TimeoutError:
        return False
    return receive.complete


class DrainBeforeAnswering:
    """Reads (and drops) the rest of a request body before the response ends, within bounds, so that an
    early answer (a refusal, an unknown content type) does not cost the client its connection. HTTP/2:
    Hypercorn forgets a stream once its response ends, and request data arriving for it afterwards raises in
    its connection handler, which drops the whole connection with every other stream on it. HTTP/1.1: an
    unread body makes Hypercorn close the connection under a client that may be about to reuse it."""

    def __init__(self, app: Inner) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        h2 = scope.get("http_version") == "2"
        limit, seconds = (H2_DRAIN_LIMIT, DRAIN_SECONDS_H2) if h2 else (DRAIN_LIMIT, DRAIN_SECONDS)
        tracked = _TrackedReceive(receive)

        async def send_after_body(message: dict[str, Any]) -> None:
            ending = message["type"] == "http.response.body" and not message.get("more_body")
            if ending and not tracked.complete:
                await _drain(tracked, limit, seconds)
            await send(message)

        await self._app(scope, tracked, send_after_body)


def _connect_error(refusal: Refused) -> Exception:
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError

    return ConnectError(Code(refusal.code), refusal.message)


def _log(path: str, refusal: Refused) -> None:
    """One log line and the RPC counter, as the interceptor does for the calls it sees: a refused call never
    reaches it. (Only known method paths come here, so the label set stays bounded.)"""
    method = path.lstrip("/")
    record = {
        "ts": utcnow().isoformat(timespec="milliseconds"),
        "msg": "refused",
        "method": method,
        "code": refusal.code,
        "error": refusal.message,
    }
    log.info("refused", extra={"fields": record})
    metrics().rpc_requests.labels(method, refusal.code).inc()
