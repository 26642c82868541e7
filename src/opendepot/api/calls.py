"""Per-call state shared by the interceptor and the handlers of one RPC (same asyncio task)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from time import perf_counter

from opendepot.auth import Principal
from opendepot.errors import Unauthenticated


@dataclass(slots=True)
class Call:
    method: str
    started: float = field(default_factory=perf_counter)
    principal: Principal | None = None


current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("opendepot_call", default=None)


def caller() -> Principal:
    """Who is calling this RPC: authenticated once, from the headers, before the body was read (api/guard.py),
    and put on the call by the interceptor."""
    call = current_call.get()
    if call is None or call.principal is None:
        raise Unauthenticated("missing Authorization header; send 'Authorization: Bearer <token>'")
    return call.principal
