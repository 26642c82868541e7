"""A build page's live stream (SSE) is bounded per worker: past the bound it is refused, not followed; and
an event's data, whatever line breaks it holds, reaches the browser as that one event."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from opendepot.dashboard import live
from opendepot.store import Store
from tests.support.domain import running_build


def test_past_the_bound_a_stream_is_refused_with_retry_after(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "MAX_LIVE_STREAMS", 1)
    _admin, build_id = running_build(store)  # running: followed until it ends

    async def main() -> None:
        first_sent: list[dict[str, Any]] = []
        second_sent: list[dict[str, Any]] = []
        leave = asyncio.Event()

        async def first_receive() -> dict[str, Any]:
            await leave.wait()
            return {"type": "http.disconnect"}

        answered = asyncio.Event()

        async def first_send(message: dict[str, Any]) -> None:
            first_sent.append(message)
            answered.set()

        async def second_receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def second_send(message: dict[str, Any]) -> None:
            second_sent.append(message)

        following = asyncio.create_task(
            live.stream_build(store, build_id, 0, lambda b, r: "", first_receive, first_send)
        )
        await asyncio.wait_for(answered.wait(), 5)
        assert first_sent[0]["status"] == 200 and live.streams_following() == 1
        await live.stream_build(store, build_id, 0, lambda b, r: "", second_receive, second_send)
        assert second_sent[0]["status"] == 503
        assert (b"retry-after", b"5") in second_sent[0]["headers"]
        leave.set()  # the first viewer leaves: its place is free again
        await asyncio.wait_for(following, 5)
        assert live.streams_following() == 0

    asyncio.run(main())


def parse_event_stream(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) pairs as the WHATWG event-stream parser dispatches them: a line ends at CR, LF or
    CRLF, and a blank line dispatches."""
    events: list[tuple[str, str]] = []
    kind, data = "message", list[str]()
    for line in re.split(r"\r\n|\r|\n", raw.decode()):
        if line == "":
            if data:
                events.append((kind, "\n".join(data)))
            kind, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
    return events


def test_carriage_returns_in_data_cannot_start_new_events() -> None:
    # A step name is the build token's to choose (only NUL is stripped); this one forges an `end`.
    fragment = "<li>[1/1] RUN echo hi\r\revent:end\rdata:x\r\r</li>\r\n<li>next</li>\n"
    events = parse_event_stream(live._event("steps", fragment))
    assert events == [("steps", fragment.replace("\r\n", "\n").replace("\r", "\n"))]


def follow_for(
    store: Store, build_id: str, steps_html: Any, viewers: int, seconds: float
) -> list[list[bytes]]:
    """Each viewer's SSE bodies after following the build for `seconds`."""

    async def main() -> list[list[bytes]]:
        leave = asyncio.Event()
        bodies: list[list[bytes]] = [[] for _ in range(viewers)]

        async def receive() -> dict[str, Any]:
            await leave.wait()
            return {"type": "http.disconnect"}

        def sender(n: int) -> Any:
            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.body":
                    bodies[n].append(message["body"])

            return send

        tasks = [
            asyncio.create_task(live.stream_build(store, build_id, 0, steps_html, receive, sender(n), "/p"))
            for n in range(viewers)
        ]
        await asyncio.sleep(seconds)
        leave.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return bodies

    return asyncio.run(main())


def test_viewers_of_one_build_share_its_reads_and_renders(store: Store) -> None:
    """Twenty pages on one build (a shared link needs no sign-in) cost one render per poll, not twenty."""
    _admin, build_id = running_build(store)
    renders: list[float] = []

    def steps_html(build: Any, records: Any) -> str:
        renders.append(0)
        return f"<li>{len(renders)}</li>"  # changes on every poll, as running steps' bars do

    bodies = follow_for(store, build_id, steps_html, viewers=20, seconds=1.3)
    polls = 1.3 / live.POLL_SECONDS
    assert 1 <= len(renders) <= polls + 2, len(renders)
    # Each viewer still got the step list as it changed, one event per poll (a small list is not paced).
    for events in bodies:
        assert 2 <= sum(b.startswith(b"event: steps") for b in events) <= polls + 2


def test_a_large_step_list_goes_to_a_viewer_at_a_bounded_rate(store: Store) -> None:
    _admin, build_id = running_build(store)
    renders: list[int] = []

    def steps_html(build: Any, records: Any) -> str:
        renders.append(0)
        return f"<li>{len(renders)}</li>" + "x" * (1 << 20)  # 1 MiB, changed on every poll

    [events] = follow_for(store, build_id, steps_html, viewers=1, seconds=1.6)
    sent = [b for b in events if b.startswith(b"event: steps")]
    assert len(renders) >= 3  # it polled and rendered on
    assert len(sent) == 1  # but the next 1 MiB may go only 4 s after the first (256 KiB/s)
