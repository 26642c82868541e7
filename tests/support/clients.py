"""The official clients, unmodified: @depot/sdk-node through a small driver, and the depot CLI binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.server import Server

NODE_DIR = Path(__file__).resolve().parents[1] / "e2e" / "node"
DEPOT_CLI = NODE_DIR / "node_modules" / "@depot" / "cli-linux-x64" / "bin" / "depot"
SDK_NODE = NODE_DIR / "node_modules" / "@depot" / "sdk-node"


def clients_installed() -> bool:
    return DEPOT_CLI.exists() and SDK_NODE.exists() and shutil.which("node") is not None


def sdk_node(
    base_url: str, calls: list[dict[str, Any]], timeout: float = 60, ca_file: Path | None = None
) -> list[dict[str, Any]]:
    """Runs calls through @depot/sdk-node; each result is {"ok": json} or {"error": {"code", "message"}}."""
    env = {**os.environ, "DEPOT_API_URL": base_url}
    if ca_file is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca_file)
    result = subprocess.run(
        ["node", str(NODE_DIR / "driver.mjs")],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sdk-node driver failed: {result.stderr}")
    outcomes: list[dict[str, Any]] = json.loads(result.stdout)
    return outcomes


def ts(at: datetime) -> dict[str, Any]:
    """A google.protobuf.Timestamp for the sdk-node driver (which turns "bigint:" strings into BigInts)."""
    return {"seconds": f"bigint:{int(at.timestamp())}", "nanos": at.microsecond * 1000}


def sdk_one(base_url: str, service: str, method: str, request: dict[str, Any], token: str) -> dict[str, Any]:
    return sdk_node(base_url, [{"service": service, "method": method, "request": request, "token": token}])[0]


def depot(
    base_url: str,
    token: str | None,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "DEPOT_API_URL": base_url,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
        "DEPOT_ERROR_TELEMETRY": "0",
        "HOME": os.environ.get("HOME", "/root"),
        **(env or {}),
    }
    full_env.pop("DEPOT_TOKEN", None)
    if token is not None:
        full_env["DEPOT_TOKEN"] = token
    return subprocess.run(
        [str(DEPOT_CLI), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_build(server: Server, token: str, project: str, context: Path) -> subprocess.Popen[str]:
    """A `depot build` left running, its output (stdout and stderr) kept for communicate()."""
    env = {
        **os.environ,
        "DEPOT_API_URL": server.url,
        "DEPOT_TOKEN": token,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
        "DEPOT_ERROR_TELEMETRY": "0",
    }
    return subprocess.Popen(
        [str(DEPOT_CLI), "build", "--project", project, "--progress", "plain", str(context)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
