"""Two `opendepot serve` nodes on one PostgreSQL (and one shared data dir, as a shared volume would be): any
node's API and gateway serve any build; the singular duties run on one node and move when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from bench.build import new_build, until_active
from tests.e2e.test_builds import build, new_project, step_states
from tests.e2e.test_steps import run_steps, steps_of
from tests.support.builds import buildctl_via_gateway, builds_possible, busybox_context
from tests.support.server import Server, create_postgres_database, drop_postgres_database, postgres_admin_url

pytestmark = [
    pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible())),
    pytest.mark.skipif(postgres_admin_url() is None, reason="several nodes share PostgreSQL (./dev test)"),
]
# server/singular.py: TTL 10 s, renewed every 2 s.
TAKEOVER_LIMIT_SECONDS = 15.0


@pytest.fixture
def database() -> Iterator[str]:
    admin_url = postgres_admin_url()
    assert admin_url is not None
    url, name = create_postgres_database(admin_url)
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, name)


def holder(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT holder FROM singular_leases WHERE name = 'singular-duties' AND expires_at > now()"
                )
            ).first()
            return None if row is None else str(row[0])
    finally:
        engine.dispose()


def supervisor_pid(node: Server) -> int:
    assert node.process is not None
    return node.process.pid


def test_two_nodes_share_builds_and_hand_over_the_singular_duties(database: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    nodes = []
    try:
        node_a = Server(data_dir=data_dir, database_url=database, extra_args=["--registry", "off"]).start(
            timeout=120
        )
        nodes.append(node_a)
        node_b = Server(data_dir=data_dir, database_url=database, extra_args=["--registry", "off"]).start(
            timeout=120
        )
        nodes.append(node_b)
        held_by = holder(database)
        assert held_by is not None and f":{supervisor_pid(node_a)}:" in held_by

        token = node_a.admin_token
        project = new_project(node_a, token, "two-nodes")
        context = busybox_context(tmp_path / "ctx", "echo from-node-b-gateway", "echo second-step")
        with httpx.Client(timeout=60) as http:
            # Created through node A's API; A (the holder) starts the builder.
            build_id, build_token = new_build(http, node_a, project)
            details = until_active(http, node_a, build_id, build_token).connection.value  # type: ignore[union-attr]
            # Through node B's gateway instead of the one A advertised.
            command = buildctl_via_gateway(details, tmp_path / "certs")
            command[command.index("--addr") + 1] = f"tcp://127.0.0.1:{node_b.buildkit_port}"
            solve = ["build", "--frontend", "dockerfile.v0", "--progress", "plain"]
            solve += ["--local", f"context={context}", "--local", f"dockerfile={context}"]
            solved = subprocess.run(
                [*command, *solve],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert solved.returncode == 0, solved.stderr
            assert "from-node-b-gateway" in solved.stderr
        # B's gateway recorded the steps; A's API reads them from the store.
        deadline = time.monotonic() + 30
        while len(run_steps(steps_of(node_a, token, project, build_id))) < 2:
            assert time.monotonic() < deadline, "node A never saw the steps recorded through node B"
            time.sleep(0.5)

        # Node A's supervisor dies without a word: B takes the duties over, and builds through B work.
        os.kill(supervisor_pid(node_a), signal.SIGKILL)
        killed = time.monotonic()
        while True:
            held_by = holder(database)
            if held_by is not None and f":{supervisor_pid(node_b)}:" in held_by:
                break
            assert time.monotonic() - killed < TAKEOVER_LIMIT_SECONDS, f"still held by {held_by}"
            time.sleep(0.2)
        took_over = time.monotonic() - killed
        print(f"node B took over the singular duties {took_over:.1f} s after node A was killed")
        code, output = build(
            node_b, token, project, busybox_context(tmp_path / "after", "echo after-failover")
        )
        assert code == 0, output
        assert "after-failover" in output
        assert set(step_states(output).values()) == {"DONE"}
    finally:
        for node in nodes:
            node.stop()
