"""Transport: HTTP/1.1 with JSON (curl), h2c prior knowledge, and TLS with ALPN h2 and http/1.1 — on the
ports the official clients expect. Plus first-start bootstrap and the per-RPC log line."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import clients_installed, depot, sdk_node
from tests.support.server import Server
from tests.support.tls import make_server_cert

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
needs_clients = pytest.mark.skipif(not clients_installed(), reason="run `make setup` to install the clients")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30, check=False)


@needs_curl
def test_curl_json_over_http1_and_h2c(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    auth = f"Authorization: Bearer {token}"
    for version in ("--http1.1", "--http2-prior-knowledge"):
        r = curl(
            version,
            "-w",
            "\n%{http_version} %{http_code}",
            "-H",
            auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"name":"from-curl","cachePolicy":{"keepGb":7,"keepDays":3}}',
            f"{server.url}/depot.core.v1.ProjectService/CreateProject",
        )
        body, status = r.stdout.rsplit("\n", 1)
        assert status == ("1.1 200" if version == "--http1.1" else "2 200"), r.stdout + r.stderr
        project = json.loads(body)["project"]
        assert project["cachePolicy"] == {"keepBytes": str(7 << 30), "keepGb": 7, "keepDays": 3}
    r = curl(
        "-w",
        " %{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
        f"{server.url}/depot.core.v1.ProjectService/ListProjects",
    )
    body, status = r.stdout.rsplit(" ", 1)
    assert status == "401" and json.loads(body)["code"] == "unauthenticated"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_server_cert(root / "certs")
    srv = Server(data_dir=root / "data", database_url=None, tls=(cert, key)).start()
    try:
        yield srv, ca
    finally:
        srv.stop()


@needs_curl
def test_tls_offers_h2_and_http1(tls_server: tuple[Server, Path]) -> None:
    srv, ca = tls_server
    auth = f"Authorization: Bearer {srv.admin_token}"
    for version, expected in (("--http2", "2"), ("--http1.1", "1.1")):
        r = curl(
            version,
            "--cacert",
            str(ca),
            "-w",
            "\n%{http_version}",
            "-H",
            auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            "{}",
            f"{srv.url}/depot.core.v1.OrganizationService/ListOrganizations",
        )
        body, negotiated = r.stdout.rsplit("\n", 1)
        assert negotiated == expected, r.stderr
        assert json.loads(body)["organizations"][0]["name"] == "default"


@needs_clients
def test_official_clients_over_tls(tls_server: tuple[Server, Path]) -> None:
    srv, ca = tls_server
    token = srv.admin_token
    created = depot(srv.url, token, "projects", "create", "over-tls", env={"SSL_CERT_FILE": str(ca)})
    assert created.returncode == 0, created.stderr
    pid = json.loads(created.stdout)["project_id"]
    [outcome] = sdk_node(
        srv.url,
        [
            {
                "service": "core.v1.ProjectService",
                "method": "getProject",
                "token": token,
                "request": {"projectId": pid},
            }
        ],
        ca_file=ca,
    )
    assert outcome["ok"]["project"]["name"] == "over-tls"


def test_bootstrap_writes_a_private_admin_token_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Server(data_dir=data, database_url=None).start()
    try:
        token_file = data / "admin-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        secret = token_file.read_text().strip()
        assert secret.startswith("odo_") and len(secret) >= 40
    finally:
        first.stop()
    second = Server(data_dir=data, database_url=None, port=first.port).start()
    second.stop()
    log = first.log_text()
    assert log.count("created organization 'default'") == 1
    assert token_file.read_text().strip() == secret
    assert secret not in log


def test_one_log_line_per_rpc_without_secrets(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    marker = "log-probe-project"
    [outcome] = sdk_node(
        server.url,
        [
            {
                "service": "core.v1.ProjectService",
                "method": "createProject",
                "token": token,
                "request": {"name": marker},
            }
        ],
    )
    pid = outcome["ok"]["project"]["projectId"]
    sdk_node(
        server.url,
        [
            {
                "service": "core.v1.ProjectService",
                "method": "getProject",
                "token": token,
                "request": {"projectId": "zzzzzzzzzz"},
            }
        ],
    )
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith('{"ts"')]
    lines = [r for r in lines if r.get("msg") == "rpc"]
    assert pid
    create = [r for r in lines if r["method"] == "depot.core.v1.ProjectService/CreateProject"][-1]
    assert create["code"] == "ok" and create["token_kind"] == "organization" and len(create["token_id"]) == 10
    assert isinstance(create["duration_ms"], float)
    missing = [r for r in lines if r["method"] == "depot.core.v1.ProjectService/GetProject"][-1]
    assert missing["code"] == "not_found"
    assert token not in server.log_text()
