"""Refuses a request that carries a NUL character in any of its strings, naming the field.

No Depot request has a reason to: ids, names, tags and paths are printable. PostgreSQL's text refuses a NUL,
so before this check one in any id (a project, a build, a token) reached the driver and came back as an
internal error. SQLite would have stored it. One check on the decoded request, for every method and both
stores, instead of one per field: `invalid_argument` with the field's path (e.g. `options[0].tags[2]`).

Client streams are checked message by message as the handler reads them. BuildKit's own status messages,
which the CLI relays in ReportStatus(Stream), are left alone: a vertex's name is a Dockerfile's text, and
the step recorder stores a NUL in one as U+FFFD (as it does in build output) rather than lose the stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from connectrpc.request import RequestContext
from protobuf import (
    DescFieldValueList,
    DescFieldValueMap,
    DescFieldValueMessage,
    DescFieldValueScalar,
    DescMessage,
    Message,
    Oneof,
    ScalarType,
)

from opendepot.errors import InvalidArgument

REQ = TypeVar("REQ")
RES = TypeVar("RES")

NUL = "\x00"
# Message types passed through to the step recorder, which makes their strings storable itself.
RECORDED_AS_IS = frozenset({"moby.buildkit.v1.StatusResponse"})


@dataclass(frozen=True, slots=True)
class _Field:
    """One field that holds a string, or a message that may: where to read it and what it holds."""

    name: str  # the proto name, for the error's path
    local_name: str
    oneof: str | None  # the attribute of its oneof, which holds Oneof(field=local_name, value)
    repeated: bool  # a list (a map's values count as a list; its keys are checked beside them)
    map_keys: bool  # a map with string keys
    message: DescMessage | None  # None: the values are strings


_plans: dict[str, tuple[_Field, ...]] = {}


def _plan(desc: DescMessage) -> tuple[_Field, ...]:
    """The fields of a message type that hold strings, or messages that may (built once per type; the
    messages' own plans are built when first walked)."""
    known = _plans.get(desc.type_name)
    if known is not None:
        return known
    fields: list[_Field] = []
    for field in desc.fields:
        value = field.value
        message: DescMessage | None = None
        repeated = map_keys = False
        if isinstance(value, DescFieldValueScalar):
            if value.scalar != ScalarType.STRING:
                continue
        elif isinstance(value, DescFieldValueMessage):
            message = value.message
        elif isinstance(value, DescFieldValueList):
            repeated = True
            if isinstance(value.element, DescMessage):
                message = value.element
            elif value.element != ScalarType.STRING:
                continue
        elif isinstance(value, DescFieldValueMap):
            repeated, map_keys = True, value.key == ScalarType.STRING
            if isinstance(value.value, DescMessage):
                message = value.value
            elif value.value != ScalarType.STRING and not map_keys:
                continue
        else:  # enums
            continue
        if message is not None and message.type_name in RECORDED_AS_IS:
            continue
        oneof = getattr(value, "oneof", None)
        fields.append(
            _Field(
                name=field.name,
                local_name=field.local_name,
                oneof=oneof.local_name if oneof is not None else None,
                repeated=repeated,
                map_keys=map_keys,
                message=message,
            )
        )
    plan = tuple(fields)
    _plans[desc.type_name] = plan
    return plan


def nul_field(message: Message[Any], path: str = "") -> str | None:
    """The path of the first string holding a NUL character, or None."""
    for field in _plan(message.desc()):
        if field.oneof is None:
            value = getattr(message, field.local_name)
        else:
            chosen = getattr(message, field.oneof)
            if not isinstance(chosen, Oneof) or chosen.field != field.local_name:
                continue
            value = chosen.value
        if value is None:
            continue
        where = f"{path}{field.name}"
        if not field.repeated:
            items: Iterable[tuple[str, Any]] = [(where, value)]
        elif isinstance(value, dict):
            if field.map_keys and (key := next((k for k in value if NUL in k), None)) is not None:
                return f"{where}[{key!r}]"
            items = ((f"{where}[{key!r}]", item) for key, item in value.items())
        else:
            items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
        for at, item in items:
            if field.message is None:
                if isinstance(item, str) and NUL in item:
                    return at
            elif isinstance(item, Message) and (found := nul_field(item, f"{at}.")) is not None:
                return found
    return None


def refuse_nul(message: object) -> None:
    if isinstance(message, Message) and (where := nul_field(message)) is not None:
        raise InvalidArgument(where, "must not contain a NUL character")


class NoNulInStrings:
    """A connectrpc interceptor for every kind of method: the request (or each message of a request stream)
    is checked before the handler sees it."""

    async def intercept_unary(
        self, call_next: Callable[[REQ, RequestContext[Any, Any]], Awaitable[RES]], request: REQ, ctx: Any, /
    ) -> RES:
        refuse_nul(request)
        return await call_next(request, ctx)

    async def intercept_server_stream(
        self,
        call_next: Callable[[REQ, RequestContext[Any, Any]], AsyncIterator[RES]],
        request: REQ,
        ctx: Any,
        /,
    ) -> AsyncIterator[RES]:
        refuse_nul(request)  # raised at the first read of the answer, where the stream's errors are mapped
        async for message in call_next(request, ctx):
            yield message

    async def intercept_client_stream(
        self,
        call_next: Callable[[AsyncIterator[REQ], RequestContext[Any, Any]], Awaitable[RES]],
        request: AsyncIterator[REQ],
        ctx: Any,
        /,
    ) -> RES:
        return await call_next(_checked(request), ctx)


async def _checked(messages: AsyncIterator[REQ]) -> AsyncIterator[REQ]:
    async for message in messages:
        refuse_nul(message)
        yield message
