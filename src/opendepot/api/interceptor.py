"""Runs first on every RPC, before the body is read: sets up the call record, then on the way out maps
errors to Connect codes and writes one structured log line (method, code, duration, token kind and id)."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from opendepot.metrics import metrics

from .calls import Call, current_call
from .errors import to_connect_error
from .guard import authenticated

log = logging.getLogger("opendepot.rpc")


class CallInterceptor:
    async def on_start(self, ctx: RequestContext[Any, Any]) -> Call:
        method = f"{ctx.method.service_name}/{ctx.method.name}"
        # The guard authenticated the caller from its headers before the body was read.
        call = Call(method=method, principal=authenticated.get())
        current_call.set(call)
        return call

    async def on_end(self, call: Call, ctx: RequestContext[Any, Any], error: Exception | None, /) -> None:
        code = "ok"
        mapped: ConnectError | None = None
        if error is not None:
            mapped, unexpected = to_connect_error(error, call.method)
            code = mapped.code.value
            if unexpected:
                log.error("unexpected error in %s", call.method, exc_info=error)
        principal = call.principal
        record = {
            "msg": "rpc",
            "method": call.method,
            "code": code,
            "duration_ms": round((perf_counter() - call.started) * 1000, 2),
            "token_kind": principal.kind.value if principal else None,
            "token_id": principal.token_id if principal else None,
        }
        if principal is not None and principal.build_id:
            record["build_id"] = principal.build_id
        if mapped is not None and code != "ok":
            record["error"] = mapped.message
        log.info("rpc", extra={"fields": record})
        measured = metrics()
        measured.rpc_requests.labels(call.method, code).inc()
        measured.rpc_seconds.labels(call.method).observe(perf_counter() - call.started)
        if mapped is not None and mapped is not error:
            raise mapped
