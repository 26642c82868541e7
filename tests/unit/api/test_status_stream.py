"""ReportStatusStream writes a small message on the API worker's own loop (Store.run_short): a client that
streams many small messages must still let the worker's other requests run between them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.api.calls import Call, current_call
from opendepot.api.deps import Deps
from opendepot.api.rpc.cli.v1.build import SMALL_STATUS_BYTES, BuildService
from opendepot.builds import queries
from opendepot.gen.depot.cli.v1 import build_pb as pb
from opendepot.gen.moby.buildkit.v1 import control_pb
from opendepot.store import Store
from opendepot.store.engine import sqlite_url
from tests.support.domain import running_build

T = TypeVar("T")
MESSAGES = 40


def vertex_message(build_id: str, n: int) -> pb.ReportStatusStreamRequest:
    at = Timestamp.from_datetime(datetime(2026, 1, 1, tzinfo=UTC))
    vertex = control_pb.Vertex(digest=f"sha256:{n:064x}", name=f"[depot] step {n}", started=at, completed=at)
    return pb.ReportStatusStreamRequest(
        build_id=build_id, statuses=[control_pb.StatusResponse(vertexes=[vertex])]
    )


def test_many_small_messages_are_written_inline_and_other_requests_run_between_them(tmp_path: Path) -> None:
    store = Store.open(sqlite_url(tmp_path), tmp_path)
    store.inline_writes = True  # as an API worker's store
    try:
        admin, build_id = running_build(store)
        writers: list[int] = []
        call = store.call

        def recording_call(fn: Callable[[Any], T]) -> T:
            writers.append(threading.get_ident())
            return call(fn)

        store.call = recording_call  # type: ignore[method-assign]
        # Only what the handler uses: the store and the log cap (its defaults).
        service = BuildService(cast(Deps, _HandlerDeps(store)), machines=cast(Any, None))
        messages = [vertex_message(build_id, n) for n in range(MESSAGES)]
        assert all(len(m.statuses[0].to_binary()) <= SMALL_STATUS_BYTES for m in messages)

        async def stream() -> AsyncIterator[pb.ReportStatusStreamRequest]:
            for message in messages:  # never awaits: only the handler can let others run
                yield message

        async def main() -> int:
            current_call.set(Call("depot.cli.v1.BuildService/ReportStatusStream", principal=admin))
            ticks, done = 0, False

            async def other_request() -> None:
                nonlocal ticks
                while not done:
                    ticks += 1
                    await asyncio.sleep(0)

            other = asyncio.create_task(other_request())
            await asyncio.sleep(0)
            before = ticks
            await service.report_status_stream(stream(), ctx=cast(Any, None))
            during, done = ticks - before, True
            await other
            return during

        during = asyncio.run(main())
        assert writers == [threading.get_ident()] * MESSAGES  # every message written on the loop's thread
        assert during >= MESSAGES - 1  # and the other request ran between them
        with store.transaction() as session:
            assert queries.step_count(session, build_id) == MESSAGES
    finally:
        store.dispose()


class _HandlerDeps:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.build_log_limit_bytes = 1 << 20
