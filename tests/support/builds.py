"""Build contexts made locally (no registry): FROM scratch plus Debian's static busybox gives a shell."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.support.clients import clients_installed

BUSYBOX = Path("/bin/busybox")
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def builds_possible() -> str | None:
    """Why builds cannot run here, or None."""
    if not clients_installed():
        return "the official clients are not installed (./dev setup)"
    if os.geteuid() != 0:
        return "buildkitd with runc needs root"
    if not (VENV_BIN / "buildkitd").exists() and shutil.which("buildkitd") is None:
        return "buildkitd is not installed (./dev setup builds it)"
    if shutil.which("runc") is None or not BUSYBOX.exists():
        return "runc and busybox-static are needed (./dev setup installs them)"
    return None


def busybox_context(directory: Path, *run_lines: str) -> Path:
    """A Dockerfile FROM scratch with busybox and one RUN step per shell line given."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, directory / "busybox")
    steps = "\n".join(f'RUN ["/bin/busybox", "sh", "-c", "{line}"]' for line in run_lines)
    (directory / "Dockerfile").write_text(f"FROM scratch\nCOPY busybox /bin/busybox\n{steps}\n")
    return directory


def step_lines(output: str, marker: str) -> list[str]:
    """The progress lines of the RUN steps whose command contains marker, with what followed them."""
    return [line for line in output.splitlines() if marker in line]


def buildctl_via_gateway(details: Any, directory: Path) -> list[str]:
    """buildctl's address and TLS flags for an `active` connection (cli.v1 ActiveConnection): the issued
    certificate, key and CA are written to directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("ca.pem", details.ca_cert.cert),
        ("cert.pem", details.cert.cert),
        ("key.pem", details.cert.key),
    ):
        (directory / name).write_text(text)
    return [
        str(VENV_BIN / "buildctl"),
        "--addr",
        details.endpoint,
        "--tlsservername",
        details.server_name,
        "--tlscacert",
        str(directory / "ca.pem"),
        "--tlscert",
        str(directory / "cert.pem"),
        "--tlskey",
        str(directory / "key.pem"),
    ]
