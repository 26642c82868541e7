"""Collects what the taps see and writes it to the store in batches, off the data path."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy.orm import Session

from opendepot.buildkit.status import decode
from opendepot.builds import steps
from opendepot.builds.steps import LogChunk, VertexUpdate
from opendepot.store import Store

log = logging.getLogger("opendepot.gateway")


@dataclasses.dataclass
class MemoryWatch:
    """A builder's memory cgroup while one build holds it: the kernel's OOM-kill count when the build
    connected, read again whenever a step fails."""

    oom_kills: Callable[[], int]
    limit_bytes: int | None
    hardware: str
    seen: int = 0

    def killed_since(self) -> bool:
        """True once per new OOM kill since the last call."""
        now = self.oom_kills()
        new, self.seen = now > self.seen, max(now, self.seen)
        return new

    def message(self) -> str:
        return steps.out_of_memory_message(self.limit_bytes, self.hardware)


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
        self._memory: dict[str, dict[str, MemoryWatch]] = defaultdict(dict)
        # One flush at a time: two writers could both insert the same new step.
        self._writing = asyncio.Lock()

    def watch_memory(self, build_id: str, platform: str, watch: MemoryWatch) -> None:
        """From the build's first connection to this builder on: a step that fails after the kernel
        OOM-killed something in the builder's cgroup is recorded as out of memory."""
        if platform not in self._memory[build_id]:
            watch.seen = watch.oom_kills()
            self._memory[build_id][platform] = watch

    def watching_memory(self, build_id: str, platform: str) -> bool:
        return platform in self._memory.get(build_id, {})

    def unwatch_memory(self, build_id: str, platform: str) -> None:
        watches = self._memory.get(build_id, {})
        watches.pop(platform, None)
        if not watches:
            self._memory.pop(build_id, None)

    def status(self, build_id: str, raw: bytes) -> None:
        vertices, logs = decode(raw)
        if build_id in self._memory:
            vertices = self._note_out_of_memory(build_id, vertices, logs)
        self._vertices[build_id] += vertices
        for chunk in logs:
            if self._seen[build_id] > self.log_cap:
                break
            self._seen[build_id] += len(chunk.data)
            self._logs[build_id].append(chunk)

    def _note_out_of_memory(
        self, build_id: str, vertices: list[VertexUpdate], logs: list[LogChunk]
    ) -> list[VertexUpdate]:
        return [self._checked(build_id, v, logs) for v in vertices]

    def _checked(self, build_id: str, vertex: VertexUpdate, logs: list[LogChunk]) -> VertexUpdate:
        """The failed vertex with the out-of-memory line (and that line in its log) if the kernel killed
        something in the builder's memory cgroup since the last failure seen."""
        if not vertex.error or steps.OUT_OF_MEMORY in vertex.error:
            return vertex
        for watch in self._memory[build_id].values():
            if watch.killed_since():
                message = watch.message()
                log.warning("build %s: step %r killed: %s", build_id, vertex.name, message)
                logs.append(LogChunk(vertex.digest, 2, vertex.completed, f"[opendepot] {message}\n".encode()))
                return dataclasses.replace(vertex, error=f"{vertex.error}\n{message}")
        return vertex

    name = "step recorder"

    async def run_once(self) -> None:
        await self.flush()

    def flush_soon(self, build_id: str) -> None:
        """Writes one build's pending steps now rather than at the next tick (its Status stream ended). At
        once, though FinishBuild then waits for this write's SQLite lock (a few ms): the build page the CLI
        prints must show the steps when the CLI returns. Deferred 50 ms, FinishBuild's median fell from ~4.4
        to ~2.2 ms, and the page opened right after the build showed none (tests/ui/test_dashboard.py)."""
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
