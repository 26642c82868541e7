"""A running build's page follows it over Server-Sent Events: new log lines (each event's id is the last
line's id, so a reconnecting EventSource resumes exactly after what it had: nothing lost, nothing twice),
the step list whenever it changes (rendered by the same template as the page), and `end` with the final
status and duration. The store is polled: the tap that records steps may run in another worker or node."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from opendepot.api.http.asgi import Receive, Send
from opendepot.builds import queries as build_queries
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.store import Store

from .presentation import build_duration, human_duration
from .web import SECURITY_HEADERS

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
MAX_STREAM_SECONDS = 3600.0
LINES_PER_EVENT = 2000
# Streams one worker follows at once. Each polls the store twice a second for up to an hour, and a shared
# link's stream needs no sign-in: past the bound a stream is refused (503, Retry-After), and the page tries
# again later (build.js).
MAX_LIVE_STREAMS = 200
RETRY_AFTER_SECONDS = 5
# A changed step list goes to a stream at most at this many bytes a second: a build of 2,000 long-named
# steps renders to ~1 MiB, and its running steps' bars change on every poll (a few KiB for a usual build:
# every poll still).
STEPS_BYTES_PER_SECOND = 256 * 1024

StepsHtml = Callable[[Build, list[builds.StepRecord]], str]


class _Streams:
    following = 0


@dataclass(frozen=True)
class _View:
    at: float
    build: Build | None
    records: list[builds.StepRecord]
    fragment: str


class _SharedViews:
    """One read and one render of a build's steps per poll, however many pages follow it (a shared link's
    streams need no sign-in: 60 of them on one build re-read and re-rendered 2,000 steps each, twice a
    second, on the worker's loop). Keyed by build and page (a shared page's links differ from a signed-in
    one's); rendered in a thread."""

    def __init__(self) -> None:
        self._views: dict[tuple[str, str], _View] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._watching: Counter[tuple[str, str]] = Counter()

    @contextlib.contextmanager
    def watching(self, key: tuple[str, str]) -> Iterator[None]:
        self._watching[key] += 1
        try:
            yield
        finally:
            self._watching[key] -= 1
            if not self._watching[key]:
                del self._watching[key]
                self._views.pop(key, None)
                self._locks.pop(key, None)

    async def view(self, store: Store, key: tuple[str, str], steps_html: StepsHtml) -> _View:
        loop = asyncio.get_running_loop()
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._views.get(key)
            if cached is not None and loop.time() - cached.at < POLL_SECONDS * 0.9:
                return cached
            build_id = key[0]
            build = await store.read(lambda s: build_queries.get(s, build_id))
            records: list[builds.StepRecord] = []
            fragment = ""
            if build is not None:
                records = await store.read(partial(builds.step_records, build=build))
                fragment = await asyncio.to_thread(steps_html, build, records)
            view = self._views[key] = _View(loop.time(), build, records, fragment)
            return view


_shared = _SharedViews()


def streams_following() -> int:
    return _Streams.following


# The event-stream format ends a line at CR, LF or CRLF: splitting on LF alone let a CR in a step name
# (build-token controlled) end a data line early and start fields of the attacker's choosing.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _event(kind: str, data: str, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return f"{head}event: {kind}\n{body}\n".encode()


async def stream_build(
    store: Store,
    build_id: str,
    after: int,
    steps_html: StepsHtml,
    receive: Receive,
    send: Send,
    page: str = "",
) -> None:
    """page: what the rendered steps depend on besides the build (its links' base)."""
    if _Streams.following >= MAX_LIVE_STREAMS:
        busy = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            (b"cache-control", b"no-store"),
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 503, "headers": busy})
        await send({"type": "http.response.body", "body": b"too many live pages are open; retry later"})
        return
    _Streams.following += 1
    try:
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch_disconnect())
        key = (build_id, page)
        try:
            with _shared.watching(key):
                await _follow(store, key, after, steps_html, send, gone)
        finally:
            watcher.cancel()
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        _Streams.following -= 1


async def _follow(
    store: Store,
    key: tuple[str, str],
    after: int,
    steps_html: StepsHtml,
    send: Send,
    gone: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    started = last_sent = loop.time()
    shown_steps = ""
    steps_due = started  # when this stream may get a changed step list again
    while not gone.is_set() and loop.time() - started < MAX_STREAM_SECONDS:
        view = await _shared.view(store, key, steps_html)
        build, records, fragment = view.build, view.records, view.fragment
        if build is None:
            return
        finished = build.finished_at is not None
        if fragment != shown_steps and (finished or loop.time() >= steps_due):
            shown_steps = fragment
            event = _event("steps", fragment)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            last_sent = loop.time()
            steps_due = last_sent + len(event) / STEPS_BYTES_PER_SECOND
        step_ids = {s.digest: s.id for s in records}
        while True:
            lines = await store.read(
                partial(builds.log_since, build=build, after_id=after, limit=LINES_PER_EVENT)
            )
            if not lines:
                break
            after = lines[-1][0]
            payload = json.dumps([[i, step_ids.get(d, 0), t] for i, d, t in lines], separators=(",", ":"))
            event = _event("log", payload, after)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            last_sent = loop.time()
            if len(lines) < LINES_PER_EVENT:
                break
        if finished:
            final = {"status": build.status, "duration": human_duration(build_duration(build))}
            await send(
                {"type": "http.response.body", "body": _event("end", json.dumps(final)), "more_body": True}
            )
            return
        if loop.time() - last_sent > KEEPALIVE_SECONDS:
            await send({"type": "http.response.body", "body": b": keepalive\n\n", "more_body": True})
            last_sent = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), POLL_SECONDS)
