"""What one organization may take at once. --max-builders-per-org: at most N builders run at once; past it
a `depot build` waits (GetBuildKitConnection stays pending) and starts once one of the organization's builders
is free, while another organization's build goes on. Without it, an organization token could start a builder
in each of any number of projects. --max-builds-per-minute: CreateBuild refuses an organization's builds past
N a minute, with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from opendepot.gen.depot.cli.v1 import build_pb as cli
from tests.e2e.test_build_lifecycle import BS, connect, finish
from tests.e2e.test_builds import build, new_project, new_project_token
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import sdk_node, start_build, ts
from tests.support.rpc import call
from tests.support.server import Server

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))


@contextmanager
def two_organizations(tmp_path: Path, *flags: str) -> Iterator[tuple[Server, str, str]]:
    """A server started with `flags`, and the tokens of two organizations on it."""
    srv = Server(data_dir=tmp_path / "data", database_url=None, extra_args=list(flags)).start()
    try:
        _org, token = srv.new_organization()
        _other_org, other_token = srv.new_organization()
        yield srv, token, other_token
    finally:
        srv.stop()


def hold_the_builder(http: httpx.Client, srv: Server, token: str, project: str) -> cli.CreateBuildResponse:
    """A build of the project that takes a builder (GetBuildKitConnection) and keeps it until finished."""
    created = call(
        http, srv.url, f"{BS}/CreateBuild", cli.CreateBuildRequest(project_id=project), token
    ).message(cli.CreateBuildResponse)
    connect(http, srv, created.build_id, created.build_token)
    return created


def test_an_organization_past_its_cap_waits_and_another_does_not(tmp_path: Path) -> None:
    with two_organizations(tmp_path, "--max-builders-per-org", "1") as (srv, token, other_token):
        holding, waiting = new_project(srv, token, "holding"), new_project(srv, token, "waiting")
        neighbour = new_project(srv, other_token, "neighbour")
        context = busybox_context(tmp_path / "ctx", "echo capped")
        with httpx.Client(timeout=30) as http:
            created = hold_the_builder(http, srv, token, holding)  # the organization's one builder

            queued = start_build(srv, token, waiting, context)
            try:
                code, output = build(srv, other_token, neighbour, context)
                assert code == 0, output  # another organization is not held back
                time.sleep(3)
                assert queued.poll() is None, queued.communicate()[0]  # still waiting for a builder
                assert "waits: organization" in srv.log_text()
                assert "(--max-builders-per-org 1)" in srv.log_text()

                finish(http, srv, created.build_id, created.build_token)
                output, _ = queued.communicate(timeout=120)
                assert queued.returncode == 0, output
                assert "capped" in output
                assert (
                    f"builder {holding}/amd64 stops, idle, to make room for {waiting}/amd64" in srv.log_text()
                )
            finally:
                if queued.poll() is None:
                    queued.kill()
                    queued.communicate()


def test_an_organization_past_its_builds_per_minute_is_refused_with_the_reason(tmp_path: Path) -> None:
    """--max-builds-per-minute 2: the depot CLI's third build in a minute is refused by CreateBuild with the
    reason, whichever of the organization's projects it names and whether its token is the organization's or
    a project's (a project token counts against its organization); another organization builds."""
    with two_organizations(tmp_path, "--max-builds-per-minute", "2") as (srv, token, other_token):
        first, second = new_project(srv, token, "first"), new_project(srv, token, "second")
        first_token = new_project_token(srv, token, first)
        context = busybox_context(tmp_path / "ctx", "echo counted")
        for project, caller in ((first, first_token), (second, token)):
            code, output = build(srv, caller, project, context)
            assert code == 0, output
        for caller in (first_token, token):
            code, output = build(srv, caller, first, context)
            assert code != 0, output
            assert "resource_exhausted: organization" in output, output
            assert "created 2 builds in the last minute, the most it may (--max-builds-per-minute)" in output
        code, output = build(srv, other_token, new_project(srv, other_token, "theirs"), context)
        assert code == 0, output


def test_a_build_that_only_waited_for_a_builder_is_not_billed(tmp_path: Path) -> None:
    """--max-builders-per-org 1: a depot build that waits for the organization's one builder and is given up
    (the CI job cancelled) counts as a build but bills no machine minutes (GetUsage through @depot/sdk-node);
    before, its lease was billed from when it asked for a builder."""
    with two_organizations(tmp_path, "--max-builders-per-org", "1") as (srv, token, _other_token):
        holding, waiting = new_project(srv, token, "holding"), new_project(srv, token, "given-up")
        context = busybox_context(tmp_path / "ctx", "echo never-built")
        start = datetime.now(UTC) - timedelta(minutes=1)
        with httpx.Client(timeout=30) as http:
            created = hold_the_builder(http, srv, token, holding)  # the organization's one builder
            queued = start_build(srv, token, waiting, context)
            try:
                deadline = time.monotonic() + 30
                while "waits: organization" not in srv.log_text() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert "waits: organization" in srv.log_text()
                time.sleep(2)
            finally:
                queued.kill()
                queued.communicate()
            finish(http, srv, created.build_id, created.build_token)
        end = datetime.now(UTC) + timedelta(minutes=1)
        [outcome] = sdk_node(
            srv.url,
            [
                {
                    "service": "core.v1.UsageService",
                    "method": "getUsage",
                    "token": token,
                    "request": {"startAt": ts(start), "endAt": ts(end)},
                }
            ],
        )
        usage = {c["projectName"]: c for c in outcome["ok"]["containerBuild"]}
        assert usage["given-up"]["buildCount"] == 1, usage
        assert usage["given-up"].get("minutesBilled", 0) == 0, usage  # it waited, and used nothing
        assert usage["holding"]["minutesBilled"] >= 1, usage  # it held the builder
