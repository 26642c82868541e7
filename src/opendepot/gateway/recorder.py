"""Collects what the taps see and writes it to the store in batches, off the data path."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from sqlalchemy.orm import Session

from opendepot.buildkit.status import decode
from opendepot.builds import steps
from opendepot.builds.steps import LogChunk, VertexUpdate
from opendepot.store import Store

log = logging.getLogger("opendepot.gateway")


class StepRecorder:
    def __init__(self, store: Store, log_cap: int = steps.DEFAULT_LOG_CAP, interval: float = 0.2) -> None:
        self.store = store
        self.log_cap = log_cap
        self.interval = interval
        self._vertices: dict[str, list[VertexUpdate]] = defaultdict(list)
        self._logs: dict[str, list[LogChunk]] = defaultdict(list)
        # Log bytes seen per build: past the cap only the chunk that crosses it is kept (for the marker),
        # so memory stays bounded however much a build prints.
        self._seen: dict[str, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()
        # One flush at a time: two writers could both insert the same new step.
        self._writing = asyncio.Lock()

    def status(self, build_id: str, raw: bytes) -> None:
        vertices, logs = decode(raw)
        self._vertices[build_id] += vertices
        for chunk in logs:
            if self._seen[build_id] > self.log_cap:
                break
            self._seen[build_id] += len(chunk.data)
            self._logs[build_id].append(chunk)

    name = "step recorder"

    async def run_once(self) -> None:
        await self.flush()

    def flush_soon(self, build_id: str) -> None:
        """Writes one build's pending steps now rather than at the next tick (its Status stream ended)."""
        task = asyncio.get_running_loop().create_task(self.flush({build_id}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self, only: set[str] | None = None) -> None:
        async with self._writing:
            await self._flush(only)

    async def _flush(self, only: set[str] | None) -> None:
        builds = (set(self._vertices) | set(self._logs)) if only is None else only
        for build_id in builds:
            vertices, logs = self._vertices.pop(build_id, []), self._logs.pop(build_id, [])

            def write(
                session: Session,
                b: str = build_id,
                v: list[VertexUpdate] = vertices,
                lg: list[LogChunk] = logs,
            ) -> None:
                steps.apply(session, b, v, lg, self.log_cap)

            try:
                await self.store.run(write)
            except Exception:
                log.exception(
                    "could not record the steps of build %s", build_id, extra={"build_id": build_id}
                )
