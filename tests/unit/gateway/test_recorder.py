"""The step recorder writes a build's last steps shortly after its Status stream ends: after the client's
FinishBuild, which would otherwise queue behind that write for SQLite's lock, and long before the next
tick."""

from __future__ import annotations

import asyncio

from opendepot.builds import queries
from opendepot.gateway.recorder import FLUSH_AFTER_STATUS_END, StepRecorder
from opendepot.store import Store
from tests.support.domain import running_build
from tests.unit.gateway.test_out_of_memory import status


def test_the_end_of_a_status_stream_writes_the_steps_shortly_after(store: Store) -> None:
    build_id = running_build(store)[1]
    recorder = StepRecorder(store, interval=3600)  # no tick within the test: only flush_soon writes

    def written() -> bool:
        with store.transaction() as session:
            return queries.step(session, build_id, "sha256:a") is not None

    async def scenario() -> tuple[bool, bool]:
        recorder.status(build_id, status("sha256:a", log=b"hello\n"))
        recorder.flush_soon(build_id)
        await asyncio.sleep(0)  # the flush task starts, and waits
        at_once = written()  # what a FinishBuild arriving at once would find: the store left alone
        await asyncio.sleep(FLUSH_AFTER_STATUS_END + 0.5)
        return at_once, written()

    assert asyncio.run(scenario()) == (False, True)
    assert StepRecorder(store).interval > FLUSH_AFTER_STATUS_END  # sooner than the default tick
