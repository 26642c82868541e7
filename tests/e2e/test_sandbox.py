"""Builders are sandboxes (issue 13), proven through `opendepot serve` with the official depot CLI.

Every probe runs twice: once against a server started with --unsafe-builders, where it must succeed (so the
probe can fail for real), and once against a default (sandboxed) server, where it must fail. Probes only go
to loopback, to addresses of this host, and to network namespaces the test creates (tests/support/netns)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opendepot.builders.sandbox import Sandbox, instance_id
from tests.support.builds import BUSYBOX, builds_possible
from tests.support.clients import depot
from tests.support.netns import TestInternet
from tests.support.server import Server, remove_builder_users

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))

MODES = ["unsafe", "sandboxed"]


def start_server(data_dir: Path, mode: str, *extra: str) -> Server:
    args = ["--unsafe-builders"] if mode == "unsafe" else []
    # A generous start timeout: the machine these tests run on is shared and often loaded.
    return Server(data_dir=data_dir, database_url=None, extra_args=[*args, *extra]).start(timeout=180)


@dataclass
class ModeServer:
    server: Server
    mode: str

    @property
    def unsafe(self) -> bool:
        return self.mode == "unsafe"


@pytest.fixture(scope="module", params=MODES)
def sandbox_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModeServer]:
    data_dir = tmp_path_factory.mktemp(f"sandbox-{request.param}") / "data"
    server = start_server(data_dir, request.param)
    try:
        yield ModeServer(server, request.param)
    finally:
        server.stop()
        remove_builder_users(data_dir)


@pytest.fixture(scope="module")
def internet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestInternet]:
    inet = TestInternet.create(tmp_path_factory.mktemp("internet"))
    try:
        yield inet
    finally:
        inet.close()


class HostListener:
    """A TCP server of the test on every address of this host (dual stack), answering a banner."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind(("::", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.sendall(b"HOST-LISTENER\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def host_listener() -> Iterator[HostListener]:
    listener = HostListener()
    try:
        yield listener
    finally:
        listener.close()


def host_addresses() -> list[str]:
    """Every address of this host (IPv4 and global/loopback IPv6), from `ip -o addr`."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        family, address = fields[2], fields[3].split("/")[0]
        if family == "inet6" and address.startswith("fe80"):
            continue  # needs a scope id; link-local is covered by the stand-in
        found.append(address)
    return sorted(set(found))


PROBE_SH = r"""
probe() {
  out=$(echo | timeout 4 nc -w 3 "$1" "$2" 2>&1); rc=$?
  if [ $rc -eq 1 ]; then echo "PROBE $3 $1:$2 BLOCKED $(echo "$out" | head -1)"
  else echo "PROBE $3 $1:$2 REACHED"; fi
}
"""


def probe_context(directory: Path, script: str, dockerfile_extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, directory / "busybox")
    (directory / "probe.sh").write_text(PROBE_SH + script)
    (directory / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        f"COPY probe.sh /probe.sh\n{dockerfile_extra}RUN sh /probe.sh\n"
    )
    return directory


def new_project(server: Server, token: str) -> str:
    created = depot(server.url, token, "projects", "create", f"p-{uuid.uuid4().hex[:6]}")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["project_id"])


def depot_build(server: Server, token: str, project: str, context: Path, *extra: str) -> tuple[int, str]:
    result = depot(
        server.url, token, "build", "--project", project, "--progress", "plain", "--no-cache", *extra,
        str(context), timeout=300,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def probes(output: str) -> dict[str, str]:
    """'PROBE <label> <target> REACHED|BLOCKED ...' lines of the step output: '<label> <target>' -> line."""
    found = {}
    for match in re.finditer(r"PROBE (\S+ \S+) ((?:REACHED|BLOCKED).*)$", output, re.MULTILINE):
        found[match[1]] = match[2]
    return found


def test_1_network_run_steps_reach_nothing_of_the_host_but_the_internet(
    sandbox_server: ModeServer, internet: TestInternet, host_listener: HostListener, tmp_path: Path
) -> None:
    server, mode = sandbox_server.server, sandbox_server.mode
    _org, token = server.new_organization()
    project, other = new_project(server, token), new_project(server, token)
    assert internet.route_points_into_netns(internet.link_local)

    # Another project's builder, with a RUN step listening on a port: the host port bind probe, and a
    # target for project A.
    other_port = host_listener.port + 1 if host_listener.port < 65000 else host_listener.port - 1
    listener_ctx = probe_context(
        tmp_path / "listener", f"(nc -ll -p {other_port} -e echo OTHER-BUILDER &) ; sleep 40\n"
    )
    other_build = threading.Thread(target=depot_build, args=(server, token, other, listener_ctx), daemon=True)
    other_build.start()

    targets = [(address, host_listener.port, "host-address") for address in host_addresses()]
    targets += [(address, port, name) for address, port, name in server_ports(server)]
    targets += [
        ("127.0.0.1", other_port, "other-builder"),
        (internet.link_local, 80, "link-local"),
        (internet.address, 80, "internet"),
    ]
    # The other builder's RUN step must be listening before the probes run. Unsafe, its port is the
    # host's, so the wait ends when it answers (a fixed wait lost the race on a loaded machine);
    # sandboxed, nothing can tell from outside, so the wait is a fixed one, longer than a warm start.
    if sandbox_server.unsafe:
        deadline = time.monotonic() + 40
        while (host_bind := connect_banner("127.0.0.1", other_port)) is None and time.monotonic() < deadline:
            time.sleep(0.5)
    else:
        time.sleep(12)
        host_bind = connect_banner("127.0.0.1", other_port)
    if not sandbox_server.unsafe:
        # Inside the sandbox only (unsafe, these would be outside addresses): the build network's own
        # gateway and slirp4netns's alias for the host.
        targets += [
            ("10.10.0.1", host_listener.port, "bridge-gateway"),
            ("10.10.0.1", server.port, "bridge-gateway-api"),
            ("10.0.2.2", host_listener.port, "slirp-host"),
            ("10.0.2.2", server.registry_port, "slirp-host-registry"),
        ]
    script = "\n".join(f"probe {address} {port} {label}" for address, port, label in targets)
    script += (
        f"\nprintf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {internet.address} 80 && echo EGRESS-OK\n"
    )
    code, output = depot_build(server, token, project, probe_context(tmp_path / "probe", script))
    assert code == 0, output
    seen = probes(output)
    print(f"\n[{mode}] host-side connect to the other builder's port: {host_bind!r}")
    for key, value in sorted(seen.items()):
        print(f"[{mode}] PROBE {key} {value}")
    assert "EGRESS-OK" in output and "hello from the test internet" in output, output
    assert seen[f"internet {internet.address}:80"].startswith("REACHED")
    local = {k: v for k, v in seen.items() if not k.startswith("internet ")}
    assert len(local) == len(targets) - 1, output
    if sandbox_server.unsafe:
        # The probes are real: without the sandbox the host, the link-local stand-in and the other
        # builder's port are reached, and a RUN step's listener is a host port.
        assert seen[f"host-address 127.0.0.1:{host_listener.port}"].startswith("REACHED")
        assert seen[f"link-local {internet.link_local}:80"].startswith("REACHED")
        assert seen[f"other-builder 127.0.0.1:{other_port}"].startswith("REACHED")
        assert host_bind == "OTHER-BUILDER"
    else:
        reached = {k: v for k, v in local.items() if v.startswith("REACHED")}
        assert not reached, reached
        assert host_bind is None
    other_build.join(timeout=90)


def connect_banner(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=3) as conn:
            conn.settimeout(3)
            return conn.recv(100).decode().strip()
    except OSError:
        return None


def server_ports(server: Server) -> list[tuple[str, int, str]]:
    """The API, gateway, registry (and PostgreSQL, where one runs) on loopback."""
    ports = [
        ("127.0.0.1", server.port, "api"),
        ("127.0.0.1", server.buildkit_port, "gateway"),
        ("127.0.0.1", server.registry_port, "registry"),
    ]
    if connect_banner("127.0.0.1", 5432) is not None or _port_open(5432):
        ports.append(("127.0.0.1", 5432, "postgres"))
    return ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class RecordingHttpServer:
    """An HTTP server of the test on every IPv4 address of this host that records the paths asked for."""

    def __init__(self) -> None:
        import http.server

        seen: list[str] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                body = b"secret from the host\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def dockerfile_context(directory: Path, dockerfile: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, directory / "busybox")
    (directory / "Dockerfile").write_text(dockerfile)
    return directory


def test_2_the_daemons_own_fetches_reach_only_the_registry_and_the_internet(
    sandbox_server: ModeServer, internet: TestInternet, tmp_path: Path
) -> None:
    server = sandbox_server.server
    _org, token = server.new_organization()
    project = new_project(server, token)
    web = RecordingHttpServer()
    global_v4 = next(a for a in host_addresses() if "." in a and not a.startswith("127."))
    try:
        outcomes = {}
        for label, line in [
            ("add-loopback", f"ADD http://127.0.0.1:{web.port}/add-loopback /x"),
            ("add-host-address", f"ADD http://{global_v4}:{web.port}/add-host-address /x"),
            ("from-loopback", f"FROM 127.0.0.1:{web.port}/from-loopback/image:tag AS other\nFROM scratch"),
            ("add-internet", f"ADD http://{internet.address}/hello.txt /x"),
        ]:
            dockerfile = line if line.startswith("FROM") else f"FROM scratch\n{line}"
            if line.startswith("FROM"):
                dockerfile += "\nCOPY --from=other / /"
            context = dockerfile_context(tmp_path / label, dockerfile + "\n")
            code, output = depot_build(server, token, project, context)
            outcomes[label] = (code, output)
            error = next((ln for ln in output.splitlines() if "ERROR" in ln or "error" in ln), "")
            print(f"\n[{sandbox_server.mode}] {label}: exit {code} {error[:200]}")
        code, saved = depot_build(
            server,
            token,
            project,
            dockerfile_context(tmp_path / "save", "FROM scratch\nCOPY busybox /b\n"),
            "--save",
        )
        print(f"[{sandbox_server.mode}] --save: exit {code}, host HTTP server saw {web.seen}")
    finally:
        web.close()
    assert outcomes["add-internet"][0] == 0, outcomes["add-internet"][1]
    assert code == 0 and f"pushing manifest for {server.registry_host}/{project}:" in saved, saved
    if sandbox_server.unsafe:
        assert outcomes["add-loopback"][0] == 0 and outcomes["add-host-address"][0] == 0
        assert {"/add-loopback", "/add-host-address"} <= set(web.seen)
        assert any(path.startswith("/v2/") for path in web.seen), web.seen
    else:
        assert web.seen == []
        for label in ("add-loopback", "add-host-address", "from-loopback"):
            code, output = outcomes[label]
            assert code != 0 and "connection refused" in output, output


def run_step_pid(marker: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip() == marker.encode():
                        return int(proc.name)
                except OSError:
                    continue
        time.sleep(0.1)
    raise AssertionError(f"no process {marker!r} appeared")


def test_3_a_run_step_is_not_host_root(sandbox_server: ModeServer, tmp_path: Path) -> None:
    server = sandbox_server.server
    _org, token = server.new_organization()
    project = new_project(server, token)
    seconds = f"{20 + int(uuid.uuid4().int % 1000) / 1000:.3f}"
    context = probe_context(tmp_path / "ctx", f"id\ncat /proc/self/uid_map\nsleep {seconds}\n")
    result: dict[str, tuple[int, str]] = {}
    build = threading.Thread(
        target=lambda: result.update(done=depot_build(server, token, project, context)), daemon=True
    )
    build.start()
    pid = run_step_pid(f"sleep {seconds}")
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    step_netns = os.readlink(f"/proc/{pid}/ns/net")
    host_netns = os.readlink("/proc/self/ns/net")
    build.join(timeout=120)
    code, output = result["done"]
    assert code == 0, output
    print(f"\n[{sandbox_server.mode}] host view of the RUN step's sleep {pid}: Uid {uids}, netns {step_netns}"
          f" (host {host_netns})")  # fmt: skip
    print(
        f"[{sandbox_server.mode}] "
        + " | ".join(ln for ln in output.splitlines() if "uid=" in ln or " 0 " in ln)[:300]
    )
    if sandbox_server.unsafe:
        assert uids == ["0", "0", "0", "0"]
    else:
        assert all(uid != "0" for uid in uids), uids
        assert step_netns != host_netns
        assert "uid=0(root)" in output or "uid=0" in output  # root only inside its user namespace


def test_4_a_fork_bomb_fails_its_step_and_the_server_keeps_building(
    sandbox_server: ModeServer, tmp_path: Path
) -> None:
    server = sandbox_server.server
    _org, token = server.new_organization()
    project, other = new_project(server, token), new_project(server, token)
    # Capped at 2000 forks: an uncapped loop against an unlimited builder would exhaust the host's pids.
    bomb = "i=0\nwhile [ $i -lt 2000 ]; do sleep 5 & i=$((i+1)); done\necho SPAWNED $i\nwait\n"
    code, output = depot_build(server, token, project, probe_context(tmp_path / "bomb", bomb))
    message = next((ln for ln in output.splitlines() if "can't fork" in ln or "SPAWNED" in ln), "")
    print(f"\n[{sandbox_server.mode}] fork loop: exit {code}: {message}")
    if sandbox_server.unsafe:
        assert code == 0 and "SPAWNED 2000" in output, output
    else:
        assert code != 0 and "can't fork" in output, output
        assert "SPAWNED" not in output
    for target in (project, other):
        code, output = depot_build(
            server, token, target, probe_context(tmp_path / f"after-{target}", "echo ok")
        )
        assert code == 0, output


def children_of(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_6_builders_die_with_the_server_and_leftovers_are_killed_at_the_next_start(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "sandboxed", "--builder-idle-timeout", "600")
    decoy: subprocess.Popen[bytes] | None = None
    try:
        _org, token = server.new_organization()
        project = new_project(server, token)
        code, output = depot_build(server, token, project, probe_context(tmp_path / "ctx", "echo up"))
        assert code == 0, output
        sandbox = Sandbox(data_dir, "buildkitd")
        key = f"{project}-amd64"
        builder = sandbox.cgroups.pids(key)
        assert builder, "the builder's processes are in its pids cgroup"
        # A process the supervisor's death signal cannot reach, inside the builder's cgroup: what a
        # wedged builder would leave behind.
        decoy = subprocess.Popen(["sleep", "300"], start_new_session=True)
        (sandbox.cgroups.pids_group(key) / "cgroup.procs").write_text(str(decoy.pid))
        assert server.process is not None
        workers = children_of(server.process.pid)
        server.process.kill()  # SIGKILL: no cleanup code of the supervisor runs
        server.process.wait()
        for worker in workers:  # the API workers are the hardening issue's; not under test here
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
        died = wait_until(lambda: not any(alive(pid) for pid in builder), 15)
        print(f"\nbuilder pids {builder} after SIGKILL of the supervisor: {'all gone' if died else 'ALIVE'}")
        assert died, [pid for pid in builder if alive(pid)]
        assert alive(decoy.pid)

        restarted = start_server(data_dir, "sandboxed")
        try:
            assert wait_until(lambda: decoy is not None and decoy.poll() is not None, 10)
            assert "killed 1 process(es) left by an earlier supervisor" in restarted.log_text()
            print("decoy in the builder's cgroup after the restart: killed;", "log:", next(
                ln for ln in restarted.log_text().splitlines() if "earlier supervisor" in ln
            ))  # fmt: skip
            code, output = depot_build(
                restarted, token, project, probe_context(tmp_path / "ctx2", "echo again")
            )
            assert code == 0, output
        finally:
            restarted.stop()
        # A clean stop leaves nothing host-global behind but the users (they own the caches).
        nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        assert f"odb_{instance_id(data_dir)}" not in nft
        assert not sandbox.cgroups.builder_keys()
    finally:
        server.stop()
        if decoy is not None and decoy.poll() is None:
            decoy.kill()
        remove_builder_users(data_dir)


def test_7_no_silent_downgrade(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-rootlesskit"
    with pytest.raises(RuntimeError) as refused:
        start_server(tmp_path / "refused", "sandboxed", "--rootlesskit", str(missing))
    message = next(ln for ln in str(refused.value).splitlines() if "cannot be sandboxed" in ln)
    print(f"\nsandbox impossible: {message}")
    assert "rootlesskit" in message and "--unsafe-builders" in message

    unsafe = start_server(tmp_path / "unsafe", "unsafe", "--rootlesskit", str(missing))
    try:
        warning = next(ln for ln in unsafe.log_text().splitlines() if "UNSAFE BUILDERS" in ln)
        print(f"with --unsafe-builders: {warning}")
    finally:
        unsafe.stop()


def test_5_entitlements_are_refused_by_default(sandbox_server: ModeServer, tmp_path: Path) -> None:
    server = sandbox_server.server
    _org, token = server.new_organization()
    project = new_project(server, token)
    for entitlement, run_flag in (
        ("network.host", "--network=host"),
        ("security.insecure", "--security=insecure"),
    ):
        context = dockerfile_context(
            tmp_path / entitlement,
            f'FROM scratch\nCOPY busybox /bin/busybox\nRUN {run_flag} ["/bin/busybox", "id"]\n',
        )
        code, output = depot_build(server, token, project, context, "--allow", entitlement)
        error = next((ln for ln in output.splitlines() if "entitlement" in ln), "")
        print(f"\n[{sandbox_server.mode}] --allow {entitlement}: exit {code}: {error.strip()[:250]}")
        assert code != 0, output
        assert f"{entitlement} is not allowed" in output, output


ARCH_PROBE = """package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() { fmt.Printf("ARCH %s uid=%d\\n", runtime.GOARCH, os.Getuid()) }
"""


@pytest.mark.skipif(
    not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() or shutil.which("go") is None,
    reason="no QEMU binfmt handler for arm64 (./dev setup registers one where the kernel allows) or no Go",
)
def test_multi_platform_builds_run_arm64_through_qemu_in_the_sandbox(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "main.go").write_text(ARCH_PROBE)
    for arch in ("amd64", "arm64"):
        subprocess.run(
            ["go", "build", "-o", str(ctx / f"probe-{arch}"), str(ctx / "main.go")],
            env={**os.environ, "GOARCH": arch, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
            check=True,
            capture_output=True,
            cwd=ctx,
        )
    (ctx / "main.go").unlink()
    (ctx / "Dockerfile").write_text(
        'FROM scratch\nARG TARGETARCH\nCOPY probe-${TARGETARCH} /probe\nRUN ["/probe"]\n'
    )
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "sandboxed")
    try:
        _org, token = server.new_organization()
        project = new_project(server, token)
        code, output = depot_build(server, token, project, ctx, "--platform", "linux/amd64,linux/arm64")
        arches = sorted(set(re.findall(r"ARCH (\w+) uid=0", output)))
        print(f"\n[sandboxed] --platform linux/amd64,linux/arm64: exit {code}, RUN steps ran as {arches}")
        assert code == 0, output
        assert arches == ["amd64", "arm64"], output
    finally:
        server.stop()
        remove_builder_users(data_dir)


def test_5_entitlements_an_operator_allows_stay_inside_the_sandbox(
    sandbox_server: ModeServer, host_listener: HostListener, tmp_path: Path
) -> None:
    server = sandbox_server.server
    _org, token = server.new_organization()
    project = new_project(server, token)
    allowed = server.admin("entitlements", project, "--allow", "network.host", "--allow", "security.insecure")
    assert allowed == f"{project}\tnetwork.host,security.insecure"
    global_v4 = next(a for a in host_addresses() if "." in a and not a.startswith("127."))
    seconds = f"{30 + int(uuid.uuid4().int % 1000) / 1000:.3f}"
    script = (
        f"probe 127.0.0.1 {host_listener.port} host-network-loopback\n"
        f"probe {global_v4} {host_listener.port} host-network-address\n"
    )
    context = probe_context(
        tmp_path / "ctx",
        script,
        dockerfile_extra="",
    )
    (context / "Dockerfile").write_text(
        (context / "Dockerfile").read_text().replace("RUN sh /probe.sh", "RUN --network=host sh /probe.sh")
        + f'RUN --security=insecure sh -c "grep CapEff /proc/self/status; sleep {seconds}"\n'
    )
    result: dict[str, tuple[int, str]] = {}
    build = threading.Thread(
        target=lambda: result.update(
            done=depot_build(
                server,
                token,
                project,
                context,
                "--allow",
                "network.host",
                "--allow",
                "security.insecure",
                "--save",
            )
        ),
        daemon=True,
    )
    build.start()
    pid = run_step_pid(f"sleep {seconds}", timeout=120)
    uids = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
    step_netns = os.readlink(f"/proc/{pid}/ns/net")
    build.join(timeout=120)
    code, output = result["done"]
    assert code == 0, output
    seen = probes(output)
    print(
        f"\n[{sandbox_server.mode}] entitlements allowed; host view of the insecure step: {uids.split()[1:]}"
    )
    for key, value in sorted(seen.items()):
        print(f"[{sandbox_server.mode}] RUN --network=host: PROBE {key} {value}")
    assert f"pushing manifest for {server.registry_host}/{project}:" in output, output
    if sandbox_server.unsafe:
        assert all(v.startswith("REACHED") for v in seen.values()), seen
        assert uids.split()[1:] == ["0", "0", "0", "0"]
    else:
        assert len(seen) == 2 and all(v.startswith("BLOCKED") for v in seen.values()), seen
        assert all(uid != "0" for uid in uids.split()[1:]), uids
        assert step_netns != os.readlink("/proc/self/ns/net")


def test_a_deleted_project_takes_its_builder_user_along(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir, "sandboxed")
    try:
        _org, token = server.new_organization()
        project = new_project(server, token)
        code, output = depot_build(server, token, project, probe_context(tmp_path / "ctx", "echo hi"))
        assert code == 0, output
        sandbox = Sandbox(data_dir, "buildkitd")
        name = sandbox.user_name(project, "amd64")
        assert name in sandbox.users()
        deleted = subprocess.run(
            [sys.executable, "-m", "opendepot.cli", "projects", "delete", project],
            env={**os.environ, "DEPOT_API_URL": server.url, "DEPOT_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert deleted.returncode == 0, deleted.stderr

        # The janitor runs every 30 s. userdel rewrites /etc/passwd before /etc/subuid: wait for both.
        def gone() -> bool:
            return name not in sandbox.users() and name not in Path("/etc/subuid").read_text()

        assert wait_until(gone, 60), (sandbox.users(), Path("/etc/subuid").read_text())
        print(f"\nproject {project} deleted: builder user {name} and its subordinate ids are gone")
    finally:
        server.stop()
        remove_builder_users(data_dir)
