"""`depot login` (device flow, spec §5.7) against `opendepot serve`: the CLI prints the approval URL and
waits on FinishLogin; approval on the page (with an organization token) or by `opendepot login approve`
hands it a user token, which the CLI saves and which then works; unknown, used and expired requests fail."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from connectrpc.errors import ConnectError

from opendepot.gen.depot.cli.v1beta1 import login_connect
from opendepot.gen.depot.cli.v1beta1 import login_pb as pb
from tests.support.clients import DEPOT_CLI, clients_installed, depot, sdk_one
from tests.support.server import Server

pytestmark = pytest.mark.skipif(not clients_installed(), reason="the official clients are not installed")


class Login:
    """`depot login` running in the background with its own HOME, and the URL it printed."""

    def __init__(self, srv: Server, home: Path) -> None:
        self.home = home
        env = {
            **os.environ,
            "DEPOT_API_URL": srv.url,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "DEPOT_NO_UPDATE_NOTIFIER": "1",
            "BROWSER": "true",
        }
        env.pop("DEPOT_TOKEN", None)
        self.process = subprocess.Popen(
            [str(DEPOT_CLI), "login"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output += line
            if match := re.search(rf"{re.escape(srv.url)}/login/([A-Za-z0-9_-]+)", line):
                self.url, self.id = match[0], match[1]
                return
        self.process.kill()
        raise AssertionError(f"depot login printed no approval URL:\n{self.output}")

    def finish(self) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=60)
        return self.process.returncode, self.output + out

    def saved_token(self) -> str:
        text = (self.home / ".config" / "depot" / "depot.yaml").read_text()
        match = re.search(r"api_token:\s*(\S+)", text)
        assert match, text
        return match[1]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    path.mkdir()
    yield path


def test_login_approved_on_the_page(server: Server, org: tuple[str, str], home: Path) -> None:
    org_id, admin = org
    login = Login(server, home)
    with httpx.Client(timeout=10) as http:
        page = http.get(login.url)
        assert page.status_code == 200 and "Approve depot login" in page.text
        # The page shows the request's code, origin (the CLI's address and user agent) and time, and
        # approving takes a confirmation of them; it can be neither framed nor cached.
        shown = re.search(r"name='confirm' value='([A-Z0-9]{4}-[A-Z0-9]{4})'", page.text)
        assert shown, page.text
        assert "127.0.0.1" in page.text and "depot-cli" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
        wrong = http.post(login.url, data={"token": "odo_not-a-token", "confirm": shown[1]})
        assert wrong.status_code == 403
        unconfirmed = http.post(login.url, data={"token": admin})
        assert unconfirmed.status_code == 403 and "confirm" in unconfirmed.text
        approved = http.post(login.url, data={"token": admin, "confirm": shown[1]})
        assert approved.status_code == 200 and "Login approved" in approved.text
    code, output = login.finish()
    assert code == 0, output
    token = login.saved_token()
    assert token.startswith("odu_")
    # The CLI chose the organization through ListOrganizations with the new token.
    assert org_id in (home / ".config" / "depot" / "depot.yaml").read_text()
    listed = sdk_one(server.url, "core.v1.OrganizationService", "listOrganizations", {}, token)
    assert [o["orgId"] for o in listed["ok"]["organizations"]] == [org_id]
    # The saved token is what the CLI uses from now on (no DEPOT_TOKEN).
    created = depot(
        server.url,
        None,
        "projects",
        "create",
        "after-login",
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
    )
    assert created.returncode == 0, created.stderr
    # The request is used up: the page and FinishLogin refuse it now.
    with httpx.Client(timeout=10) as http:
        assert http.get(login.url).status_code == 404


def test_login_approved_by_the_admin_command(server: Server, org: tuple[str, str], home: Path) -> None:
    org_id, _admin = org
    login = Login(server, home)
    approved = server.admin("login", "approve", login.id, "--org", org_id)
    assert org_id in approved
    code, output = login.finish()
    assert code == 0, output
    assert login.saved_token().startswith("odu_")


async def finish(srv: Server, login_id: str) -> list[str]:
    async with login_connect.LoginServiceClient(srv.url) as client:
        return [m.token async for m in client.finish_login(pb.FinishLoginRequest(id=login_id))]


def test_unknown_used_and_expired_requests_fail(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConnectError) as unknown:
        asyncio.run(finish(server, "no-such-login"))
    assert unknown.value.code.value == "not_found"
    with pytest.raises(ConnectError) as blank:
        asyncio.run(finish(server, ""))
    assert blank.value.code.value == "invalid_argument" and "id" in blank.value.message
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{server.url}/login/no-such-login").status_code == 404

    async def start(srv: Server) -> pb.StartLoginResponse:
        async with login_connect.LoginServiceClient(srv.url) as client:
            return await client.start_login(pb.StartLoginRequest())

    started = asyncio.run(start(server))
    # The approval URL names the request by a handle of its own, not by the secret FinishLogin redeems.
    approval_id = started.approve_url.removeprefix(f"{server.url}/login/")
    assert started.approve_url.startswith(f"{server.url}/login/") and started.id not in started.approve_url
    with pytest.raises(ConnectError) as by_url:
        asyncio.run(finish(server, approval_id))
    assert by_url.value.code.value == "not_found"
    with pytest.raises(RuntimeError):
        server.admin("login", "approve", started.id, "--org", org[0])  # the secret does not approve
    server.admin("login", "approve", approval_id, "--org", org[0])
    assert [t[:4] for t in asyncio.run(finish(server, started.id))] == ["odu_"]
    with pytest.raises(ConnectError) as used:
        asyncio.run(finish(server, started.id))
    assert used.value.code.value == "failed_precondition"

    short = Server(
        data_dir=tmp_path / "short", database_url=None, extra_args=["--login-timeout-seconds", "1"]
    )
    short.start()
    try:
        waiting = asyncio.run(start(short))
        with pytest.raises(ConnectError) as expired:
            asyncio.run(finish(short, waiting.id))
        assert expired.value.code.value == "failed_precondition" and "expired" in expired.value.message
    finally:
        short.stop()


def test_an_anonymous_caller_cannot_pile_up_logins_or_waiting_streams(tmp_path: Path) -> None:
    """Both login RPCs are public. One worker, so that every stream below meets the same worker's bound."""
    srv = Server(data_dir=tmp_path / "data", database_url=None, extra_args=["--workers", "1"]).start()

    async def main() -> None:
        async with login_connect.LoginServiceClient(srv.url) as client:
            started = [await client.start_login(pb.StartLoginRequest()) for _ in range(50)]
            with pytest.raises(ConnectError) as piled:
                await client.start_login(pb.StartLoginRequest())
            assert piled.value.code.value == "resource_exhausted" and "this address" in piled.value.message

            async def wait() -> list[str]:
                return [m.token async for m in client.finish_login(pb.FinishLoginRequest(id=started[0].id))]

            waiting = [asyncio.create_task(wait()) for _ in range(2)]
            await asyncio.sleep(1.5)  # both streams are polling now
            assert not any(task.done() for task in waiting)
            with pytest.raises(ConnectError) as third:
                await wait()
            assert third.value.code.value == "resource_exhausted"
            # Another login's stream is not held back by the first one's.
            other = asyncio.create_task(finish(srv, started[1].id))
            approval = started[1].approve_url.rsplit("/", 1)[1]
            org_id, _token = srv.new_organization()
            await asyncio.to_thread(srv.admin, "login", "approve", approval, "--org", org_id)
            [token] = await asyncio.wait_for(other, 10)
            assert token.startswith("odu_")
            for task in waiting:
                task.cancel()

    try:
        asyncio.run(main())
    finally:
        srv.stop()
