"""Per-call state shared by the interceptor and the handlers of one RPC (same asyncio task)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from time import perf_counter

from opendepot.auth import Principal


@dataclass(slots=True)
class Call:
    method: str
    started: float = field(default_factory=perf_counter)
    principal: Principal | None = None


current_call: contextvars.ContextVar[Call | None] = contextvars.ContextVar("opendepot_call", default=None)
