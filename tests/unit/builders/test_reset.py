"""What the builders domain records of a project's builders: asked to reset per project, and forgotten when
the project is deleted (before, a deleted project's rows stayed for good: in the builders gauge, in every
start's reaping of leftovers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opendepot.builders import queries
from opendepot.builders import service as machines
from opendepot.builders.reset import BuilderReset
from opendepot.builders.states import BuilderState
from opendepot.datadir import DataDir
from opendepot.store import Store


def recorded(store: Store) -> dict[tuple[str, str], str]:
    with store.transaction() as session:
        return {(m.project_id, m.platform): m.state for m in queries.all_machines(session)}


def test_a_reset_asks_for_one_projects_builders_and_forget_drops_only_its_rows(
    store: Store, tmp_path: Path
) -> None:
    with store.transaction() as session:
        machines.set_state(session, "gone", "amd64", BuilderState.RUNNING, pid=10)
        machines.set_state(session, "gone", "arm64", BuilderState.STOPPED)
        machines.set_state(session, "kept", "amd64", BuilderState.RUNNING, pid=11)
    with store.transaction() as session:
        assert machines.request_reset(session, "gone") == 2
    with store.transaction() as session:
        assert machines.resetting(session, "gone") and not machines.resetting(session, "kept")
    assert recorded(store)[("kept", "amd64")] == BuilderState.RUNNING

    asyncio.run(BuilderReset(DataDir(tmp_path), store).forget("gone"))
    assert recorded(store) == {("kept", "amd64"): BuilderState.RUNNING}
