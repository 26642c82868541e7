"""Issue 13, item 4: a RUN step that outgrows its builder's memory fails the build with a message that says
so, through `opendepot serve` and the official depot CLI. The server caps every builder at 256 MiB
(--builder-memory-limit-mib) so the step need not allocate a whole hardware size on a shared machine."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_builds import build, builds_of, new_project
from tests.e2e.test_steps import logs_of, run_steps, steps_of
from tests.support.builds import builds_possible, busybox_context
from tests.support.server import Server, with_builder_users_removed

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))

CAP_MIB = 256
# Doubles a string up to 512 MiB (bounded: should the cap not hold, it still ends).
GREEDY = "a=0123456789abcdef; i=0; while [ $i -lt 25 ]; do a=$a$a; i=$((i+1)); done; echo GREW ${#a}"
MESSAGE = f"out of memory: the builder's memory limit ({CAP_MIB} MiB, capped by the operator; hardware"


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("oom") / "data"
    args = ["--builder-memory-limit-mib", str(CAP_MIB)]
    with with_builder_users_removed(Server(data_dir=data_dir, database_url=None, extra_args=args)) as server:
        yield server


def test_an_out_of_memory_step_fails_the_build_and_says_so(capped_server: Server, tmp_path: Path) -> None:
    server = capped_server
    _org, token = server.new_organization()
    project = new_project(server, token, "oom")
    code, output = build(server, token, project, busybox_context(tmp_path / "greedy", "echo START", GREEDY))
    print(f"\ndepot build: exit {code}; " + " | ".join(ln for ln in output.splitlines() if "137" in ln))
    assert code != 0, output
    assert not re.search(r"GREW \d", output), output
    [failed] = builds_of(server, token, project)
    assert failed["status"] == "failed"
    greedy = next(s for s in run_steps(steps_of(server, token, project, failed["id"])) if "GREW" in s["name"])
    print(f"step error: {greedy['error']!r}")
    assert "exit code: 137" in greedy["error"]
    assert MESSAGE in greedy["error"] and "the step was killed" in greedy["error"]
    logs = logs_of(server, token, project, failed["id"], greedy["digest"])
    print(f"step log: {logs!r}")
    assert any(line.startswith(f"[opendepot] {MESSAGE}") for line in logs), logs
    # The build's own error (kept in the store; the dashboard shows it) says so too.
    with sqlite3.connect(server.data_dir / "opendepot.db") as db:
        [(error,)] = db.execute("SELECT error FROM builds WHERE id = ?", (failed["id"],)).fetchall()
    print(f"build error: {error!r}")
    assert MESSAGE in error

    # A step that fails for another reason is not called out of memory, and the builder still builds.
    code, output = build(server, token, project, busybox_context(tmp_path / "other", "echo fine; exit 9"))
    assert code != 0
    latest = builds_of(server, token, project)[0]
    [step] = run_steps(steps_of(server, token, project, latest["id"]))
    assert "exit code: 9" in step["error"] and "out of memory" not in step["error"]
    code, output = build(server, token, project, busybox_context(tmp_path / "small", "echo small"))
    assert code == 0, output
