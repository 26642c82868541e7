"""Network namespaces that a test creates for itself: a test "internet" and a link-local stand-in.

Probes only ever go to loopback or to these namespaces. The "internet" is a netns behind a veth pair, with
an HTTP server on an address of the benchmarking range (198.18.0.0/15), routed through the host. The
link-local stand-in is another address on the same veth (169.254.77.x, never the metadata address) with a
/32 route that the test checks points into its own netns before anything is sent there."""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class TestInternet:
    """A netns with an HTTP server on `address`:80 (and on the link-local stand-in) serving `root`."""

    __test__ = False  # a fixture's helper, not a test class pytest should try to collect

    name: str
    host_veth: str
    address: str
    host_address: str
    link_local: str
    root: Path
    server: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, root: Path) -> TestInternet:
        tag = uuid.uuid4().hex[:6]
        block = (
            random.randrange(1, 16000) * 4
        )  # a /30 of 198.18.0.0/16 that parallel runs are unlikely to share
        net = f"198.18.{block // 256}.{block % 256}"
        base = net.rsplit(".", 1)[0]
        last = int(net.rsplit(".", 1)[1])
        inet = cls(
            name=f"odt-{tag}",
            host_veth=f"odt{tag}",
            address=f"{base}.{last + 1}",
            host_address=f"{base}.{last + 2}",
            link_local=f"169.254.77.{random.randrange(2, 250)}",
            root=root,
        )
        inet._up()
        return inet

    def _up(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.host_veth, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_veth)
        _ip("link", "set", self.host_veth, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", "eth0")
        _ip("-n", self.name, "addr", "add", f"{self.link_local}/32", "dev", "eth0")
        _ip("-n", self.name, "link", "set", "eth0", "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "route", "add", "default", "via", self.host_address)
        _ip("route", "add", f"{self.link_local}/32", "dev", self.host_veth)
        route = _ip("route", "get", self.link_local)
        if f"dev {self.host_veth}" not in route:
            self.close()
            raise RuntimeError(f"the link-local stand-in is not routed into the test netns: {route}")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "hello.txt").write_text("hello from the test internet\n")
        self.server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "0.0.0.0",
                "80",
            ],
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://{self.address}/hello.txt", timeout=1).read()
                return
            time.sleep(0.1)
        self.close()
        raise RuntimeError("the test internet's HTTP server did not come up")

    def route_points_into_netns(self, address: str) -> bool:
        return f"dev {self.host_veth}" in _ip("route", "get", address)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=10)
        _ip("route", "del", f"{self.link_local}/32", check=False)
        _ip("link", "del", self.host_veth, check=False)
        _ip("netns", "del", self.name, check=False)


def netns_possible() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2 is missing"
    return None
