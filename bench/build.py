"""Build-path benchmarks: no tax over the DIY alternative, measured against baselines in the same run.

(a) Server round trips the depot CLI waits on: CreateBuild, and GetBuildKitConnection on a warm builder
    (a new build each call), p50/p95 over many calls; the cold builder start once.
                                                      targets: p95 <= 5 ms each; cold <= 2 s
(b) The DIY alternative: `docker buildx build` (Debian trixie's buildx, standalone) with the `remote` driver
    at the user's own buildkitd over mTLS (same buildkitd binary and settings as opendepot's builders, its
    own warm cache) vs `depot build` through opendepot (API, gateway, the project's warm builder).
    - a no-change rebuild of a small busybox Dockerfile,
    - the realistic app of bench/ci.py after a one-line source change.
    Ratio of medians depot / buildx, with the range over paired runs.     target: <= 1.05
    `buildctl` straight at the builder's unix socket is shown as the floor. Where the depot CLI's time goes
    is shown from the server's own log: the CLI's start until CreateBuild arrives, the server's time on the
    round trips the CLI waits for (CreateBuild, GetBuildKitConnection, FinishBuild), the BuildKit session
    through the gateway (GetBuildKitConnection answered until FinishBuild sent), FinishBuild until exit.
    A third side, `tap off`, is the same CLI through a second server started with `--status-tap false`:
    the status tap's share (its decoding and its write of the build's steps when the solve ends), apart from
    the rest of opendepot's path.
    And the gateway's share of the session, beside the DIY buildkitd's own mTLS listener: a new connection
    (TCP, TLS with client certificate, admission, HTTP/2 preface and SETTINGS answered by BuildKit) and the
    time one HTTP/2 round trip (SETTINGS, acknowledged by BuildKit) takes once connected.
(c) A 200 MB build context: buildctl through the gateway (mTLS, issued certificate) vs buildctl straight at
    the builder's socket; a fresh random file each run so that all of it crosses; ratio of throughputs.
    - one build,
    - 4 concurrent builds in 4 projects (aggregate throughput).          target: >= 0.9
    One warm-up run per side first; per side, the median CPU seconds of the client, the gateway's process
    and the builder(s) per run (on 2 cores the CPU the gateway takes is what the builds lose).
(d) The image in the local Docker engine (needs one: `./dev test` starts Debian's dockerd), a small busybox
    image, cache warm: `depot build --load` vs `depot build` (the difference is the load: push to the project
    registry, pull into the engine) and vs `docker build` (the engine's own builder, cached) of the same
    Dockerfile; `depot pull` vs `docker pull` of a saved build from the registry (image removed first).

With --baseline-src DIR (the src/ of another checkout, e.g. `git archive main src | tar -x -C /tmp/base`),
(a), the no-change rebuild and (c) also run a second server from that code, alternately with this one: before
and after in one run ((c) adds its gateway as a third side, `@baseline`).

    .venv/bin/python bench/build.py [--runs N] [--context-mb M] [--only api,rebuild,realistic,context]
                                    [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path

import h2.connection
import h2.events
import h2.settings
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import realistic_app as app  # noqa: E402
from opendepot.gen.depot.cli.v1 import build_pb as cli  # noqa: E402
from opendepot.gen.depot.core.v1 import project_pb  # noqa: E402
from tests.support.builds import VENV_BIN, buildctl_via_gateway, builds_possible, busybox_context  # noqa: E402
from tests.support.processes import stop  # noqa: E402
from tests.support.rpc import call  # noqa: E402
from tests.support.server import Server, free_port  # noqa: E402

BS = "depot.cli.v1.BuildService"
timed = app.timed  # other benches (bench/kubernetes.py) time their commands with bench.build.timed
SECTIONS = ("api", "rebuild", "realistic", "context", "load")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def new_build(http: httpx.Client, srv: Server, project: str) -> tuple[str, str]:
    r = call(http, srv.url, f"{BS}/CreateBuild", cli.CreateBuildRequest(project_id=project), srv.admin_token)
    created = r.message(cli.CreateBuildResponse)
    return created.build_id, created.build_token


def get_connection(
    http: httpx.Client, srv: Server, build_id: str, token: str
) -> cli.GetBuildKitConnectionResponse:
    request = cli.GetBuildKitConnectionRequest(build_id=build_id, platform=cli.BuilderPlatform.AMD64)
    return call(http, srv.url, f"{BS}/GetBuildKitConnection", request, token).message(
        cli.GetBuildKitConnectionResponse
    )


def until_active(
    http: httpx.Client, srv: Server, build_id: str, token: str
) -> cli.GetBuildKitConnectionResponse:
    while True:
        response = get_connection(http, srv, build_id, token)
        if response.connection is not None and response.connection.field == "active":
            return response
        time.sleep(0.02)


def active_details(
    response: cli.GetBuildKitConnectionResponse,
) -> cli.GetBuildKitConnectionResponse.ActiveConnection:
    assert response.connection is not None
    details = response.connection.value
    assert isinstance(details, cli.GetBuildKitConnectionResponse.ActiveConnection)
    return details


def create_project(http: httpx.Client, srv: Server, name: str) -> str:
    r = call(
        http,
        srv.url,
        "depot.core.v1.ProjectService/CreateProject",
        project_pb.CreateProjectRequest(name=name),
        srv.admin_token,
    )
    created = r.message(project_pb.CreateProjectResponse).project
    assert created is not None
    return created.project_id


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def diy_certificates(directory: Path) -> dict[str, Path]:
    """What a DIY user makes for a remote buildkitd: a CA, a server certificate for 127.0.0.1, a client's."""
    now = dt.datetime.now(dt.UTC)
    directory.mkdir(parents=True, exist_ok=True)

    def signed(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        *extensions: tuple[x509.ExtensionType, bool],
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = signed(
        "diy CA", ca_key, _name("diy CA"), ca_key, (x509.BasicConstraints(ca=True, path_length=None), True)
    )
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = signed(
        "127.0.0.1",
        server_key,
        ca.subject,
        ca_key,
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    client = signed(
        "diy client",
        client_key,
        ca.subject,
        ca_key,
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    )
    paths = {}
    for label, cert, key in (
        ("ca", ca, None),
        ("server", server, server_key),
        ("client", client, client_key),
    ):
        paths[label] = directory / f"{label}.pem"
        paths[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            paths[f"{label}-key"] = directory / f"{label}-key.pem"
            paths[f"{label}-key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    return paths


@contextmanager
def diy_buildkitd(
    work: Path, registry: str, unix_socket: Path | None = None
) -> Iterator[tuple[str, dict[str, Path]]]:
    """The user's own buildkitd on TCP with mTLS, configured as opendepot configures its builders; with
    unix_socket it listens there too (without TLS: buildkitd's TLS is for TCP listeners)."""
    work.mkdir(parents=True, exist_ok=True)
    certs = diy_certificates(work / "diy-certs")
    address = f"tcp://127.0.0.1:{free_port()}"
    config = work / "diy-buildkitd.toml"
    config.write_text(f'[registry."{registry}"]\n  http = true\n[worker.containerd]\n  enabled = false\n')
    log = (work / "diy-buildkitd.log").open("wb")
    process = subprocess.Popen(
        [
            str(VENV_BIN / "buildkitd"),
            "--config",
            str(config),
            "--root",
            str(work / "diy-state"),
            "--addr",
            address,
            *(["--addr", f"unix://{unix_socket}"] if unix_socket else []),
            "--tlscert",
            str(certs["server"]),
            "--tlskey",
            str(certs["server-key"]),
            "--tlscacert",
            str(certs["ca"]),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield address, certs
    finally:
        stop(process)
        log.close()


def buildx_remote(work: Path, address: str, certs: dict[str, Path], docker_dir: Path) -> list[str]:
    """`buildx create --driver remote` at the DIY buildkitd; returns the build command's prefix."""
    buildx = app.tool("buildx")
    if buildx is None:
        sys.exit("bench/build.py: buildx is missing (./dev bench installs trixie's docker-buildx into .venv)")
    env = {**os.environ, "DOCKER_CONFIG": str(docker_dir)}
    opts = f"cacert={certs['ca']},cert={certs['client']},key={certs['client-key']},servername=127.0.0.1"
    subprocess.run(
        [buildx, "create", "--name", "diy", "--driver", "remote", "--driver-opt", opts, address],
        env=env,
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    bootstrap = [buildx, "inspect", "--bootstrap", "diy"]
    while subprocess.run(bootstrap, env=env, capture_output=True, check=False).returncode:
        if time.monotonic() > deadline:
            sys.exit("bench/build.py: buildx could not reach the DIY buildkitd")
        time.sleep(0.2)
    return [buildx, "build", "--builder", "diy", "--progress", "plain"]


def measure(
    label: str, runs: int, sides: Sequence[tuple[str, Callable[[int], float]]]
) -> dict[str, list[float]]:
    """Runs each side once per run, rotating which goes first."""
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for i in range(runs):
        order = list(sides[i % len(sides) :]) + list(sides[: i % len(sides)])
        for name, run in order:
            times[name].append(run(i))
        print(
            f"  {label} run {i + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n, _ in sides), flush=True
        )
    return times


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200, help="calls for the round-trip figures")
    parser.add_argument("--context-mb", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=4, help="builds at once in (c); 0: none")
    parser.add_argument("--modules", type=int, default=300, help="C modules of the realistic app")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="src/ of another opendepot checkout: (a) and the no-change rebuild run it too, alternately",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    if (why := builds_possible()) is not None:
        sys.exit(f"bench/build.py cannot run here: {why}")
    buildctl = str(VENV_BIN / "buildctl")
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-build-") as tmp:
        work = Path(tmp)
        srv = Server(data_dir=work / "data", database_url=None).start(timeout=120)
        stack = ExitStack()
        try:
            before = stack.enter_context(baseline(work, args.baseline_src)) if args.baseline_src else None
            with httpx.Client(timeout=60) as http:
                project = create_project(http, srv, "bench")
                build_id, token = new_build(http, srv, project)
                start = time.perf_counter()
                active = until_active(http, srv, build_id, token)
                cold = time.perf_counter() - start
                active_details(active)  # an active connection, or this fails
                socket = srv.data_dir / "run" / f"{project}-amd64.sock"
                report.append(
                    f"(a) cold builder start: {cold * 1000:.0f} ms  [target <= 2000 ms: {verdict(cold <= 2)}]"
                )

                if "api" in only:
                    servers = [("", srv, project)]
                    if before is not None:
                        servers.append((" @baseline", before, create_project(http, before, "bench")))
                    report += api_rows(servers, args.calls, work)

                docker_dir = app.docker_config(work / "docker", srv.registry_host, srv.admin_token)
                env = app.depot_env(srv.url, srv.admin_token, docker_dir)
                if "rebuild" in only or "realistic" in only:
                    with diy_buildkitd(work, srv.registry_host) as (address, certs):
                        buildx = buildx_remote(work, address, certs, docker_dir)
                        buildx_env = {**env}
                        if "rebuild" in only:
                            small = busybox_context(work / "small", "echo bench > /b", "cat /b")
                            direct = [
                                buildctl,
                                "--addr",
                                f"unix://{socket}",
                                "build",
                                "--frontend",
                                "dockerfile.v0",
                                "--local",
                                f"context={small}",
                                "--local",
                                f"dockerfile={small}",
                            ]
                            depot = TimedCli(app.depot_build(project, small), env)
                            depot(0)
                            app.timed([*buildx, str(small)], buildx_env)
                            sides: list[tuple[str, Callable[[int], float]]] = [
                                ("depot", depot),
                                ("buildx", lambda _i: app.timed([*buildx, str(small)], buildx_env)),
                                ("buildctl", lambda _i: app.timed(direct)),
                            ]
                            if before is not None:
                                before_env = app.depot_env(before.url, before.admin_token, docker_dir)
                                before_project = create_project(http, before, "bench")
                                earlier = TimedCli(app.depot_build(before_project, small), before_env)
                                earlier(0)
                                sides.append(("@baseline", earlier))
                            tap_off = ["--status-tap", "false"]
                            untapped = stack.enter_context(
                                Server(work / "untapped-data", None, extra_args=tap_off).running()
                            )
                            untapped_env = app.depot_env(untapped.url, untapped.admin_token, docker_dir)
                            untapped_project = create_project(http, untapped, "bench")
                            untapped_cli = TimedCli(app.depot_build(untapped_project, small), untapped_env)
                            untapped_cli(0)
                            sides.append((UNTAPPED, untapped_cli))
                            times = measure("no-change rebuild", args.runs, sides)
                            report += rebuild_rows("no-change rebuild", times)
                            report += depot_breakdown(srv, depot.spans[1:])
                            if before is not None:
                                report += depot_breakdown(before, earlier.spans[1:], "@baseline")
                            report += depot_breakdown(untapped, untapped_cli.spans[1:], UNTAPPED)
                            dials = {"gateway": gateway_dial(http, srv, project, work / "dial")}
                            if before is not None:
                                dials["@baseline"] = gateway_dial(
                                    http, before, before_project, work / "dial-baseline"
                                )
                            dials["diy mTLS"] = diy_dial(address, certs)
                            report += connection_rows(dials, args.runs * 6)
                        if "realistic" in only:
                            base = app.seed_base(srv.url, srv.admin_token, project, srv.registry_host)
                            ours = app.write_app(work / "app-depot", base, args.modules)
                            theirs = app.write_app(work / "app-diy", base, args.modules)
                            app.timed(app.depot_build(project, ours), env)
                            app.timed([*buildx, str(theirs)], buildx_env)

                            def depot_change(i: int) -> float:
                                app.small_change(ours, i + 1)
                                return app.timed(app.depot_build(project, ours), env)

                            def buildx_change(i: int) -> float:
                                app.small_change(theirs, i + 1)
                                return app.timed([*buildx, str(theirs)], buildx_env)

                            times = measure(
                                "realistic small change",
                                args.runs,
                                [("depot", depot_change), ("buildx", buildx_change)],
                            )
                            report += rebuild_rows(
                                f"realistic app ({args.modules} modules), one-line change", times
                            )

                if "load" in only:
                    report += load_rows(srv, project, work, env, args.runs)
                if "context" in only:
                    report += context_rows(http, srv, work, project, socket, args, before)
        finally:
            stack.close()
            srv.stop()
    print(f"\nbench/build.py: {app.machine_note()}")
    print("\n".join(report))


Dial = Callable[[], socket.socket]


def tls_dial(address: str, server_name: str, ca: Path, cert: Path, key: Path) -> Dial:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])

    def dial() -> socket.socket:
        raw = socket.create_connection((host, int(port)), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's clients
        return context.wrap_socket(raw, server_hostname=server_name)

    return dial


def gateway_dial(http: httpx.Client, srv: Server, project: str, directory: Path) -> Dial:
    """Dials the gateway as a build's client: a new build, its lease and issued certificate."""
    build_id, token = new_build(http, srv, project)
    details = active_details(until_active(http, srv, build_id, token))
    buildctl_via_gateway(details, directory)  # writes the issued certificate, key and CA
    return tls_dial(
        details.endpoint,
        details.server_name,
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )


def diy_dial(address: str, certs: dict[str, Path]) -> Dial:
    dial = tls_dial(address, "127.0.0.1", certs["ca"], certs["client"], certs["client-key"])
    deadline = time.monotonic() + 30
    while True:  # the DIY buildkitd may still be starting its listener
        try:
            dial().close()
            return dial
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def h2_exchange(dial: Dial, round_trips: int) -> tuple[float, list[float]]:
    """A new connection until BuildKit's HTTP/2 SETTINGS arrived and ours were acknowledged; then the
    time of each further SETTINGS round trip (BuildKit acknowledges each; PINGs it refuses as abuse)."""

    def until(connection: h2.connection.H2Connection, sock: socket.socket, kind: type) -> None:
        while True:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("BuildKit closed the connection")
            events = connection.receive_data(data)
            sock.sendall(connection.data_to_send())
            if any(isinstance(e, kind) for e in events):
                return

    start = time.perf_counter()
    sock = dial()
    connection = h2.connection.H2Connection()
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    until(connection, sock, h2.events.SettingsAcknowledged)
    setup = time.perf_counter() - start
    times = []
    try:
        for _ in range(round_trips):
            began = time.perf_counter()
            connection.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
            sock.sendall(connection.data_to_send())
            until(connection, sock, h2.events.SettingsAcknowledged)
            times.append(time.perf_counter() - began)
    finally:
        sock.close()
    return setup, times


def connection_rows(dials: dict[str, Dial], connections: int) -> list[str]:
    setups: dict[str, list[float]] = {name: [] for name in dials}
    trips: dict[str, list[float]] = {name: [] for name in dials}
    for _ in range(connections):
        for name, dial in dials.items():  # alternately
            setup, times = h2_exchange(dial, 20)
            setups[name].append(setup * 1000)
            trips[name] += [t * 1000 for t in times]
    rows = [f"    a BuildKit connection, {connections} new connections per side (20 round trips each):"]
    for name in dials:
        new, trip = setups[name], trips[name]
        rows.append(
            f"      {name:<10} setup p50 {percentile(new, 50):5.2f} / p95 {percentile(new, 95):5.2f} ms"
            f"   one HTTP/2 round trip p50 {percentile(trip, 50):.3f} / p95 {percentile(trip, 95):.3f} ms"
        )
    return rows


def rebuild_rows(label: str, times: dict[str, list[float]]) -> list[str]:
    rows = [f"(b) {label}, {len(times['depot'])} runs, min / median / max:"]
    for name, values in times.items():
        rows.append(f"      {name:<10}{app.spread(values)}")
    ratio = statistics.median(times["depot"]) / statistics.median(times["buildx"])
    rows.append(
        f"    depot / buildx remote: {app.ratio_spread(times['depot'], times['buildx'])}"
        f"  [target <= 1.05: {verdict(ratio <= 1.05)}]"
    )
    if "@baseline" in times:
        rows.append(
            f"    depot / depot@baseline: {app.ratio_spread(times['depot'], times['@baseline'])};"
            f" depot@baseline / buildx remote: {app.ratio_spread(times['@baseline'], times['buildx'])}"
        )
    if UNTAPPED in times:
        tax = statistics.median(times["depot"]) - statistics.median(times[UNTAPPED])
        rows.append(
            f"    {UNTAPPED} / buildx remote: {app.ratio_spread(times[UNTAPPED], times['buildx'])};"
            f" the status tap's share: depot / {UNTAPPED} {app.ratio_spread(times['depot'], times[UNTAPPED])}"
            f" ({tax * 1000:+.1f} ms a build)"
        )
    return rows


# The rebuild's third side: the same depot CLI through a second server that runs without the status tap
# (--status-tap false): what recording a build's steps costs it, apart from the rest of opendepot's path.
UNTAPPED = "tap off"


@contextmanager
def baseline(work: Path, src: Path) -> Iterator[Server]:
    """A second server running the code under src (before a change), beside this checkout's."""
    if not (src / "opendepot" / "__init__.py").exists():
        sys.exit(f"bench/build.py: --baseline-src {src} holds no opendepot package")
    with Server(
        data_dir=work / "baseline-data", database_url=None, python_path=src.resolve()
    ).running() as server:
        yield server


def h2load_times(url: str, body: bytes, token: str, requests: int, work: Path) -> list[float]:
    """Each request's time in ms as h2load (a C client: it adds next to nothing) sees it: one h2c
    connection, one stream at a time; connecting is not counted. The depot CLI opens a new connection for
    each RPC: requests=1 per call is what it does."""
    work.mkdir(parents=True, exist_ok=True)
    body_file, log = work / "body", work / "h2load.log"
    body_file.write_bytes(body)
    log.unlink(missing_ok=True)  # h2load appends
    # The headers the depot CLI sends (connect-go): it accepts gzip, so the server may compress the answer.
    headers = {
        "content-type": "application/proto",
        "connect-protocol-version": "1",
        "authorization": f"Bearer {token}",
        "accept-encoding": "gzip",
        "user-agent": "depot-cli/2.102.12/linux/amd64/terminal",
    }
    args = ["h2load", "-c", "1", "-m", "1", "-n", str(requests), "-d", str(body_file), "--log-file", str(log)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    subprocess.run([*args, url], capture_output=True, check=True, timeout=120)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    times = [int(r[2]) / 1000 for r in rows if r[1] == "200"]
    assert len(times) == requests, f"{requests - len(times)} of {requests} calls to {url} failed"
    return times


def floor_row(calls: int, work: Path) -> str:
    """The stack's floor: a trivial ASGI app (bench/trivial_app.py: opendepot's supervisor, workers, event
    loop and Hypercorn settings) answering one request per new h2c connection, as GetBuildKitConnection is
    timed below."""
    port = free_port()
    trivial = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "trivial_app.py"), f"127.0.0.1:{port}", str(os.cpu_count())],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/floor"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url, content=b"")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        times = [t for _ in range(calls) for t in h2load_times(url, b"\n\x01x", "none", 1, work)]
    finally:
        trivial.terminate()
        trivial.wait(timeout=30)
    return (
        f"    the floor: a trivial ASGI app on the same Hypercorn, one request per new h2c connection, "
        f"{calls} calls: p50 {percentile(times, 50):.1f} ms, p95 {percentile(times, 95):.1f} ms"
    )


def api_rows(servers: list[tuple[str, Server, str]], calls: int, work: Path) -> list[str]:
    """CreateBuild, and the first GetBuildKitConnection of a new build on its project's warm builder (what
    the CLI does next), timed by h2load over h2c, each on a new connection with the CLI's headers; servers
    take turns in blocks of 20. With a baseline, the ratios of its percentiles to this checkout's."""
    creates: dict[str, list[float]] = {label: [] for label, _s, _p in servers}
    connects: dict[str, list[float]] = {label: [] for label, _s, _p in servers}
    with httpx.Client(timeout=60) as http:
        for _label, server, project in servers:  # each project's builder up and warm
            active_details(until_active(http, server, *new_build(http, server, project)))
        since = time.time()
        done = 0
        while done < calls:
            block = min(20, calls - done)
            for label, server, project in servers:
                create = cli.CreateBuildRequest(project_id=project).to_binary()
                url = f"{server.url}/{BS}/CreateBuild"
                for _ in range(block):  # a new connection each, as the CLI makes it
                    creates[label] += h2load_times(url, create, server.admin_token, 1, work / "h2load")
                for build_id, token in [new_build(http, server, project) for _ in range(block)]:
                    connect = cli.GetBuildKitConnectionRequest(
                        build_id=build_id, platform=cli.BuilderPlatform.AMD64
                    ).to_binary()
                    url = f"{server.url}/{BS}/GetBuildKitConnection"
                    connects[label] += h2load_times(url, connect, token, 1, work / "h2load")
                # h2load cannot show an answer: the last build's lease says the call got a connection.
                response = get_connection(http, server, build_id, token)
                assert response.connection is not None and response.connection.field == "active"
            done += block
    rows = [floor_row(calls, work / "floor")]
    for label, server, _p in servers:
        # The server's own time for the same calls (its RPC log): what the client's Python adds is not in it.
        served: dict[str, list[float]] = {"CreateBuild": [], "GetBuildKitConnection": []}
        for started, method, duration in rpc_calls(server):
            if started >= since and method in served:
                served[method].append(duration * 1000)
        for name, method, values in (
            (f"CreateBuild{label}", "CreateBuild", creates[label]),
            (f"GetBuildKitConnection (warm){label}", "GetBuildKitConnection", connects[label]),
        ):
            p50, p95 = percentile(values, 50), percentile(values, 95)
            inside = served[method]
            rows.append(
                f"    {name} over {len(values)} calls (h2load, h2c): p50 {p50:.1f} ms, p95 {p95:.1f} ms, "
                f"max {max(values):.1f} ms  [target p95 <= 5 ms: {verdict(p95 <= 5)}]"
            )
            if inside:
                p50, p95 = percentile(inside, 50), percentile(inside, 95)
                rows.append(
                    f"      the server's own time (its RPC log, {len(inside)} calls): "
                    f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
                )
    if len(servers) > 1:
        (now, *_), (before, *_) = servers[0], servers[1]
        for name, times in (("CreateBuild", creates), ("GetBuildKitConnection (warm)", connects)):
            ratios = [percentile(times[now], q) / percentile(times[before], q) for q in (50, 95)]
            rows.append(
                f"    {name}, this checkout / the baseline: p50 {ratios[0]:.2f}x, p95 {ratios[1]:.2f}x"
            )
    return rows


class TimedCli:
    """Runs a CLI command as a measured side, remembering when each run started and ended (wall clock)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command, self.env = command, env
        self.spans: list[tuple[float, float]] = []

    def __call__(self, _i: int) -> float:
        started = time.time()
        elapsed = app.timed(self.command, self.env)
        self.spans.append((started, started + elapsed))
        return elapsed


CRITICAL_RPCS = ("CreateBuild", "GetBuildKitConnection", "FinishBuild")


def rpc_calls(srv: Server) -> list[tuple[float, str, float]]:
    """(start, method, duration in s) of every RPC in the server's log, wall clock."""
    calls: list[tuple[float, str, float]] = []
    for line in srv.log_text().splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") != "rpc" or "duration_ms" not in record:
            continue
        end = dt.datetime.fromisoformat(record["ts"]).timestamp()
        duration = float(record["duration_ms"]) / 1000
        calls.append((end - duration, str(record["method"]).rsplit("/", 1)[-1], duration))
    return calls


def depot_breakdown(srv: Server, spans: list[tuple[float, float]], label: str = "depot") -> list[str]:
    """Where the depot CLI's time went, run by run, from the server's RPC log lines (each has its end time
    and duration): medians over the runs, in ms."""
    calls = rpc_calls(srv)
    parts: dict[str, list[float]] = {}
    for started, ended in spans:
        mine = [c for c in calls if started - 0.002 <= c[0] <= ended + 0.002]
        first = {m: (s, d) for s, m, d in reversed(mine)}  # each method's first call in this run
        if not all(m in first for m in CRITICAL_RPCS):
            continue
        create, connect, finish = (first[m] for m in CRITICAL_RPCS)
        rows = {
            "start until CreateBuild": create[0] - started,
            "server: CreateBuild": create[1],
            "CreateBuild until GetBuildKitConnection": connect[0] - (create[0] + create[1]),
            "server: GetBuildKitConnection": connect[1],
            "BuildKit session via the gateway": finish[0] - (connect[0] + connect[1]),
            "server: FinishBuild": finish[1],
            "FinishBuild until exit": ended - (finish[0] + finish[1]),
        }
        for name, seconds in rows.items():
            parts.setdefault(name, []).append(seconds * 1000)
    if not parts:
        return [f"    {label}: no run could be matched with the server's log"]
    runs = len(next(iter(parts.values())))
    out = [f"    where {label}'s time went, medians over {runs} runs (the server logs in 1 ms steps):"]
    for name, values in parts.items():
        median, low, high = statistics.median(values), min(values), max(values)
        out.append(f"      {name:<42}{median:7.1f} ms   (min {low:.1f}, max {high:.1f})")
    return out


def load_rows(srv: Server, project: str, work: Path, env: dict[str, str], runs: int) -> list[str]:
    version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.APIVersion}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.returncode != 0:
        return ["(d) --load and pull: skipped, no Docker engine answers here (./dev test starts one)"]
    # The CLI's Docker client speaks a newer API than Debian bookworm's engine (1.41): tell it the engine's.
    docker_env = {**env, "DOCKER_API_VERSION": version.stdout.strip(), "DOCKER_BUILDKIT": "0"}
    context = busybox_context(work / "load", "echo loaded > /loaded")
    tag = f"opendepot-bench-load:{project}"
    docker_tag = f"opendepot-bench-docker:{project}"

    def remove(*images: str) -> None:
        subprocess.run(["docker", "rmi", "-f", *images], env=docker_env, capture_output=True, check=False)

    app.timed(app.depot_build(project, context, "--load", "-t", tag), docker_env)
    app.timed(["docker", "build", "-q", "-t", docker_tag, str(context)], docker_env)

    def build_ids() -> set[str]:
        listed = subprocess.run(
            [str(app.DEPOT_CLI), "list", "builds", "--project", project, "--output", "json"],
            capture_output=True,
            text=True,
            env=docker_env,
            check=True,
        )
        return {b["id"] for b in json.loads(listed.stdout)}

    before = build_ids()
    app.timed(app.depot_build(project, context, "--save"), docker_env)
    [build_id] = build_ids() - before
    reference = f"{srv.registry_host}/{project}:{build_id}"

    def depot_pull(_i: int) -> float:
        # Every tag of these layers goes, or the engine would have them already and fetch only a manifest.
        remove(tag, docker_tag, reference, f"opendepot-bench-pulled:{project}")
        command = [
            str(app.DEPOT_CLI),
            "pull",
            "--project",
            project,
            build_id,
            "-t",
            f"opendepot-bench-pulled:{project}",
        ]
        return app.timed(command, docker_env)

    def docker_pull(_i: int) -> float:
        # Every tag of these layers goes, or the engine would have them already and fetch only a manifest.
        remove(tag, docker_tag, reference, f"opendepot-bench-pulled:{project}")
        return app.timed(["docker", "pull", "-q", reference], docker_env)

    try:
        times = measure(
            "load",
            runs,
            [
                (
                    "depot --load",
                    lambda _i: app.timed(app.depot_build(project, context, "--load", "-t", tag), docker_env),
                ),
                ("depot", lambda _i: app.timed(app.depot_build(project, context), docker_env)),
                (
                    "docker build",
                    lambda _i: app.timed(
                        ["docker", "build", "-q", "-t", docker_tag, str(context)], docker_env
                    ),
                ),
            ],
        )
        pulls = measure("pull", runs, [("depot pull", depot_pull), ("docker pull", docker_pull)])
    finally:
        remove(tag, docker_tag, reference, f"opendepot-bench-pulled:{project}")
    load_cost = [a - b for a, b in zip(times["depot --load"], times["depot"], strict=True)]
    rows = [
        f"(d) the image in the local Docker engine (busybox image, warm), {runs} runs, min / median / max:"
    ]
    for name, values in times.items():
        rows.append(f"      {name:<13}{app.spread(values)}")
    rows.append(f"      {'load alone':<13}{app.spread(load_cost)}  (depot --load minus depot, run by run)")
    rows.append(
        "    depot --load / docker build (cached): "
        + app.ratio_spread(times["depot --load"], times["docker build"])
    )
    for name, values in pulls.items():
        rows.append(f"      {name:<13}{app.spread(values)}")
    rows.append(
        f"    depot pull / docker pull: {app.ratio_spread(pulls['depot pull'], pulls['docker pull'])}"
    )
    return rows


def _cpu_seconds(pid: int) -> float:
    """user + system CPU of one process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Where a run's CPU went, on a machine where the client, the gateway and the builders share the cores:
    the clients (buildctl, reaped children of this process), the server process that hosts the gateway (with
    its gateway worker processes, if any) and the projects' buildkitd processes. Summed per side."""

    def __init__(self, srv: Server, projects: Sequence[str]) -> None:
        self.srv = srv
        self.projects = projects
        self.seconds: dict[str, dict[str, list[float]]] = {}

    def _pids(self) -> dict[str, list[int]]:
        pids: dict[str, list[int]] = {"gateway": [], "builder": []}
        assert self.srv.process is not None
        server = self.srv.process.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            gateway_worker = parent == server and "opendepot" in command and "gateway" in command
            if int(entry.name) == server or gateway_worker:
                pids["gateway"].append(int(entry.name))
            elif "buildkitd" in command and any(f"{p}-amd64.toml" in command for p in self.projects):
                pids["builder"].append(int(entry.name))
        return pids

    @contextmanager
    def measure(self, side: str) -> Iterator[None]:
        pids = self._pids()
        before = {part: sum(_cpu_seconds(p) for p in found) for part, found in pids.items()}
        clients = resource.getrusage(resource.RUSAGE_CHILDREN)
        yield
        after = {part: sum(_cpu_seconds(p) for p in found) for part, found in pids.items()}
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = self.seconds.setdefault(side, {"client": [], "gateway": [], "builder": []})
        spent["client"].append(now.ru_utime + now.ru_stime - clients.ru_utime - clients.ru_stime)
        for part in ("gateway", "builder"):
            spent[part].append(after[part] - before[part])


def cpu_rows(seconds: dict[str, dict[str, list[float]]], mb: int) -> list[str]:
    rows = ["    CPU seconds per run (median; client = buildctl, gateway = the process(es) hosting it):"]
    for side, parts in seconds.items():
        medians = {part: statistics.median(values) for part, values in parts.items()}
        per_mb = f"  ({medians['gateway'] * 1000 / mb:.2f} ms/MB in the gateway)" if side != "socket" else ""
        rows.append(
            f"      {side:<10}"
            + ", ".join(f"{part} {value:.2f}" for part, value in medians.items())
            + f", total {sum(medians.values()):.2f}{per_mb}"
        )
    totals = {}
    for side, parts in seconds.items():
        per_run = [sum(run) for run in zip(*parts.values(), strict=True)]
        totals[side] = statistics.median(per_run)
    if totals.get("gateway") and "socket" in totals:
        rows.append(
            f"    socket / gateway CPU per run: {totals['socket'] / totals['gateway']:.2f}x"
            " (what the throughput ratio tends to when the cores are the limit)"
        )
    return rows


def warm_up(sides: Sequence[tuple[str, Callable[[int], float]]], *meters: CpuMeter) -> None:
    """One unmeasured run of each side: the first build on a builder pays for its snapshotter and cache."""
    for name, run in sides:
        print(f"  warm-up {name}: {run(-1):.2f} s", flush=True)
    for meter in meters:
        meter.seconds.clear()


def context_rows(
    http: httpx.Client,
    srv: Server,
    work: Path,
    project: str,
    socket: Path,
    args: argparse.Namespace,
    before: Server | None = None,
) -> list[str]:
    """(c): this server's gateway vs the builder's socket, and with --baseline-src the baseline server's
    gateway (`@baseline`) as a third side, all alternating."""
    buildctl = str(VENV_BIN / "buildctl")
    mb = args.context_mb

    def solve(directory: Path) -> list[str]:
        return [
            "build",
            "--frontend",
            "dockerfile.v0",
            "--local",
            f"context={directory}",
            "--local",
            f"dockerfile={directory}",
        ]

    def big_context(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
        return directory

    leases: list[tuple[Server, str, str]] = []

    def renew() -> None:
        """GetBuildKitConnection renews the builds' leases, which would otherwise run out mid-bench (the bench
        sends no ReportHealth heartbeats) and have the gateway cut the connections."""
        for server, *held in leases:
            get_connection(http, server, *held)

    def via_gateway(server: Server, project_id: str, directory: Path, certs: Path) -> list[str]:
        # A build of its own: the first build's lease may have run out while the other sections ran.
        build_id, token = new_build(http, server, project_id)
        details = active_details(until_active(http, server, build_id, token))
        leases.append((server, build_id, token))
        return [*buildctl_via_gateway(details, certs), *solve(directory)]

    def at_socket(server: Server, project_id: str, directory: Path) -> list[str]:
        path = server.data_dir / "run" / f"{project_id}-amd64.sock"
        return [buildctl, "--addr", f"unix://{path}", *solve(directory)]

    one = big_context(work / "big")
    commands = {
        "gateway": via_gateway(srv, project, one, work / "certs"),
        "socket": at_socket(srv, project, one),
    }
    meters = {"": CpuMeter(srv, [project])}
    if before is not None:
        before_project = create_project(http, before, "bench-context")
        commands["@baseline"] = via_gateway(before, before_project, one, work / "certs-baseline")
        meters["@baseline"] = CpuMeter(before, [before_project])

    def measured(side: str) -> AbstractContextManager[None]:
        if side.startswith("diy"):  # not opendepot's processes: no CPU split
            return nullcontext()
        return (meters["@baseline"] if side == "@baseline" else meters[""]).measure(side)

    def fresh(name: str, command: list[str], directory: Path) -> Callable[[int], float]:
        def run(_i: int) -> float:
            (directory / "payload").write_bytes(os.urandom(mb << 20))
            renew()
            with measured(name):
                return app.timed(command)

        return run

    # The reference: what Go's own mTLS costs against the unix socket, at the user's own buildkitd (root,
    # not sandboxed), alternating with the sides above.
    diy_socket = work / "context-diy" / "buildkitd.sock"
    with diy_buildkitd(work / "context-diy", srv.registry_host, diy_socket) as (address, certs):
        diy_dial(address, certs)  # waits for its TCP listener; the socket comes up with it
        deadline = time.monotonic() + 10
        while not diy_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        commands["diy-tls"] = [
            buildctl,
            "--addr",
            address,
            "--tlscacert",
            str(certs["ca"]),
            "--tlscert",
            str(certs["client"]),
            "--tlskey",
            str(certs["client-key"]),
            "--tlsservername",
            "127.0.0.1",
            *solve(one),
        ]
        commands["diy-socket"] = [buildctl, "--addr", f"unix://{diy_socket}", *solve(one)]
        sides = [(name, fresh(name, command, one)) for name, command in commands.items()]
        warm_up(sides, *meters.values())
        times = measure(f"{mb} MB context", args.runs, sides)
    rows = [f"(c) {mb} MB context, one build, min / median / max:"]
    rows += throughput_rows(times, mb, 1, meters, before is not None)

    # N projects, each with its own warm builder, N builds at once: aggregate throughput.
    n = args.concurrent
    if n < 1:
        return rows  # --concurrent 0: the one-build row only
    dirs = [big_context(work / f"big-{k}") for k in range(n)]
    projects = [create_project(http, srv, f"concurrent-{k}") for k in range(n)]
    pairs = list(zip(projects, dirs, strict=True))
    together_commands = {
        "gateway": [via_gateway(srv, p, d, work / f"certs-{k}") for k, (p, d) in enumerate(pairs)],
        "socket": [at_socket(srv, p, d) for p, d in pairs],
    }
    meters = {"": CpuMeter(srv, projects)}
    if before is not None:
        theirs = [create_project(http, before, f"concurrent-{k}") for k in range(n)]
        together_commands["@baseline"] = [
            via_gateway(before, p, d, work / f"certs-baseline-{k}")
            for k, (p, d) in enumerate(zip(theirs, dirs, strict=True))
        ]
        meters["@baseline"] = CpuMeter(before, theirs)

    def together(name: str, commands: list[list[str]]) -> Callable[[int], float]:
        def run(_i: int) -> float:
            for directory in dirs:
                (directory / "payload").write_bytes(os.urandom(mb << 20))
            renew()
            with measured(name):
                start = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    list(pool.map(app.timed, commands))
                return time.perf_counter() - start

        return run

    sides = [(name, together(name, together_commands[name])) for name in together_commands]
    warm_up(sides, *meters.values())
    times = measure(f"{n} x {mb} MB concurrent", args.runs, sides)
    rows.append(f"(c) {n} concurrent builds in {n} projects, {mb} MB each, min / median / max (all done):")
    rows += throughput_rows(times, mb, n, meters, before is not None)
    return rows


def throughput_rows(
    times: dict[str, list[float]], mb: int, n: int, meters: dict[str, CpuMeter], baseline: bool
) -> list[str]:
    what = "aggregate" if n > 1 else "median"
    rows = [
        f"      {name:<10}{app.spread(values)}  ({what} {n * mb / statistics.median(values):.0f} MB/s)"
        for name, values in times.items()
    ]
    seconds = {side: parts for meter in meters.values() for side, parts in meter.seconds.items()}
    rows += cpu_rows(seconds, n * mb)
    label = "gateway / socket" + (" aggregate" if n > 1 else "")
    ratio = statistics.median(times["socket"]) / statistics.median(times["gateway"])
    rows.append(
        f"    {label} throughput: {app.ratio_spread(times['socket'], times['gateway'])}"
        f"  [target >= 0.9: {verdict(ratio >= 0.9)}]"
    )
    if "diy-tls" in times:
        rows.append(
            "    the DIY buildkitd's own mTLS / its socket (Go's TLS, no relay):"
            f" {app.ratio_spread(times['diy-socket'], times['diy-tls'])}"
        )
        rows.append(
            "    gateway / the DIY buildkitd's mTLS (the user's other choice):"
            f" {app.ratio_spread(times['diy-tls'], times['gateway'])}"
        )
    if baseline:
        rows.append(
            f"    @baseline's gateway / socket: {app.ratio_spread(times['socket'], times['@baseline'])};"
            f" gateway / @baseline: {app.ratio_spread(times['@baseline'], times['gateway'])}"
            " (throughput; above 1: faster)"
        )
    return rows


if __name__ == "__main__":
    main()
