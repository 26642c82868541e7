"""A real S3-compatible server on loopback for the registry's `s3` storage driver: moto's server
(`./dev setup` installs it in .tools/moto, apart from the project's own environment: botocore pins an older
python-dateutil than the Kubernetes client wants)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from .processes import stop
from .server import REPO, free_port

ACCESS_KEY = "opendepot-test"
SECRET_KEY = "opendepot-test-secret"


def moto_server() -> str | None:
    found = os.environ.get("OPENDEPOT_TEST_MOTO_SERVER") or str(REPO / ".tools/moto/bin/moto_server")
    return found if Path(found).exists() else shutil.which("moto_server")


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    name: str

    def registry_storage(self, prefix: str = "registry") -> str:
        """The value of `opendepot serve --registry-storage` for this bucket."""
        return (
            f"s3://{self.name}/{prefix}?region=us-east-1&regionendpoint={self.endpoint}"
            f"&accesskey={ACCESS_KEY}&secretkey={SECRET_KEY}&secure=false"
        )

    def object_keys(self) -> list[str]:
        listed = httpx.get(f"{self.endpoint}/{self.name}?list-type=2", timeout=10)
        listed.raise_for_status()
        return [part.split("</Key>")[0] for part in listed.text.split("<Key>")[1:]]


@contextmanager
def s3_bucket(log: Path, name: str = "opendepot-images") -> Iterator[Bucket]:
    binary = moto_server()
    assert binary is not None, "moto_server is not installed (./dev setup)"
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.put(f"{endpoint}/{name}", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield Bucket(endpoint, name)
    finally:
        stop(process, grace_seconds=10)
