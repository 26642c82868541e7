"""Build-path benchmarks, each measured in one run against a baseline on this machine.

(a) GetBuildKitConnection: cold builder start (first call until `active`) and warm calls (builder up),
    p50/p95.                                          targets: cold <= 2 s, warm p95 <= 100 ms
(b) A no-change rebuild through the depot CLI vs buildctl straight at the same buildkitd (unix socket),
    median of several runs, ratio CLI / buildctl.      target: <= 1.10
(c) A 200 MB build context: buildctl through the gateway (mTLS, issued certificate) vs buildctl straight at
    the socket; a fresh random file each run so that all of it crosses; ratio direct / gateway time.
                                                      target: >= 0.8

    .venv/bin/python bench/build.py [--runs N] [--context-mb M]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from opendepot.gen.depot.cli.v1 import build_pb as cli  # noqa: E402
from opendepot.gen.depot.core.v1 import project_pb  # noqa: E402
from tests.support.builds import VENV_BIN, buildctl_via_gateway, builds_possible, busybox_context  # noqa: E402
from tests.support.clients import depot  # noqa: E402
from tests.support.rpc import call  # noqa: E402
from tests.support.server import Server  # noqa: E402

BS = "depot.cli.v1.BuildService"


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


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warm-calls", type=int, default=50)
    parser.add_argument("--context-mb", type=int, default=200)
    args = parser.parse_args()
    if (why := builds_possible()) is not None:
        sys.exit(f"bench/build.py cannot run here: {why}")
    buildctl = str(VENV_BIN / "buildctl")
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-build-") as tmp:
        work = Path(tmp)
        srv = Server(data_dir=work / "data", database_url=None).start()
        try:
            with httpx.Client(timeout=60) as http:
                r = call(
                    http,
                    srv.url,
                    "depot.core.v1.ProjectService/CreateProject",
                    project_pb.CreateProjectRequest(name="bench"),
                    srv.admin_token,
                )
                created = r.message(project_pb.CreateProjectResponse).project
                assert created is not None
                project = created.project_id

                # (a) cold start, then warm calls on fresh builds.
                build_id, token = new_build(http, srv, project)
                start = time.perf_counter()
                active = until_active(http, srv, build_id, token)
                cold = time.perf_counter() - start
                warm = []
                for _ in range(args.warm_calls):
                    b, t = new_build(http, srv, project)
                    start = time.perf_counter()
                    response = get_connection(http, srv, b, t)
                    warm.append((time.perf_counter() - start) * 1000)
                    assert response.connection is not None and response.connection.field == "active"

                # (b) no-change rebuilds: depot CLI vs buildctl at the same buildkitd.
                context = busybox_context(work / "small", "echo bench > /b", "cat /b")
                socket = srv.data_dir / "run" / f"{project}-amd64.sock"
                direct = [
                    buildctl,
                    "--addr",
                    f"unix://{socket}",
                    "build",
                    "--frontend",
                    "dockerfile.v0",
                    "--local",
                    f"context={context}",
                    "--local",
                    f"dockerfile={context}",
                ]
                env = {
                    **os.environ,
                    "DEPOT_API_URL": srv.url,
                    "DEPOT_TOKEN": srv.admin_token,
                    "DEPOT_NO_UPDATE_NOTIFIER": "1",
                    "DEPOT_ERROR_TELEMETRY": "0",
                    "DEPOT_NO_SUMMARY_LINK": "1",
                }
                warmup = depot(srv.url, srv.admin_token, "build", "--project", project, str(context))
                assert warmup.returncode == 0, warmup.stderr
                cli_times, direct_times = [], []
                depot_cli = str(ROOT / "tests/e2e/node/node_modules/@depot/cli-linux-x64/bin/depot")
                for _ in range(args.runs):
                    cli_times.append(
                        timed(
                            [depot_cli, "build", "--project", project, "--progress", "plain", str(context)],
                            env,
                        )
                    )
                    direct_times.append(timed(direct))

                # (c) a large context through the gateway vs straight at the socket, both with buildctl.
                connection = active.connection
                assert connection is not None
                details = connection.value
                assert isinstance(details, cli.GetBuildKitConnectionResponse.ActiveConnection)
                assert details.cert is not None and details.ca_cert is not None
                big = work / "big"
                big.mkdir()
                (big / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
                solve = [
                    "build",
                    "--frontend",
                    "dockerfile.v0",
                    "--local",
                    f"context={big}",
                    "--local",
                    f"dockerfile={big}",
                ]
                through_gateway = [*buildctl_via_gateway(details, work / "certs"), *solve]
                straight = [buildctl, "--addr", f"unix://{socket}", *solve]
                gateway_times, socket_times = [], []
                for i in range(args.runs):
                    for label in ("gateway", "socket") if i % 2 == 0 else ("socket", "gateway"):
                        (big / "payload").write_bytes(os.urandom(args.context_mb << 20))
                        if label == "gateway":
                            gateway_times.append(timed(through_gateway))
                        else:
                            socket_times.append(timed(straight))
        finally:
            srv.stop()

    warm_p50, warm_p95 = percentile(warm, 50), percentile(warm, 95)
    cli_median, direct_median = statistics.median(cli_times), statistics.median(direct_times)
    gateway_median, socket_median = statistics.median(gateway_times), statistics.median(socket_times)
    rebuild_ratio = cli_median / direct_median
    context_ratio = socket_median / gateway_median
    print(
        f"\n(a) cold builder start: {cold * 1000:.0f} ms"
        f"  [target <= 2000 ms: {'met' if cold <= 2 else 'NOT met'}]"
    )
    print(
        f"    warm GetBuildKitConnection over {len(warm)} calls: p50 {warm_p50:.1f} ms, p95 {warm_p95:.1f} ms"
        f"  [target p95 <= 100 ms: {'met' if warm_p95 <= 100 else 'NOT met'}]"
    )
    print(
        f"(b) no-change rebuild, median of {args.runs}: depot CLI {cli_median * 1000:.0f} ms, "
        f"buildctl direct {direct_median * 1000:.0f} ms, ratio {rebuild_ratio:.2f}"
        f"  [target <= 1.10: {'met' if rebuild_ratio <= 1.10 else 'NOT met'}]"
    )
    mb = args.context_mb
    print(
        f"(c) {mb} MB context, median of {args.runs}: through the gateway {gateway_median:.2f} s "
        f"({mb / gateway_median:.0f} MB/s), straight at the socket {socket_median:.2f} s "
        f"({mb / socket_median:.0f} MB/s), ratio {context_ratio:.2f}"
        f"  [target >= 0.8: {'met' if context_ratio >= 0.8 else 'NOT met'}]"
    )


if __name__ == "__main__":
    main()
