"""The status tap's cost: a 200 MB build context through the gateway with the tap on vs off.

Two servers on this machine, identical but for --status-tap. Each run builds `FROM scratch` + `COPY` of a
fresh random file with buildctl through each gateway (issued certificates), alternating which goes first;
prints the median times and the ratio tap-on throughput / tap-off throughput.   target: >= 0.95

    .venv/bin/python bench/tap.py [--runs N] [--context-mb M]
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
from bench.build import new_build, until_active  # noqa: E402
from opendepot.gen.depot.cli.v1 import build_pb as cli  # noqa: E402
from opendepot.gen.depot.core.v1 import project_pb  # noqa: E402
from tests.support.builds import buildctl_via_gateway, builds_possible  # noqa: E402
from tests.support.rpc import call  # noqa: E402
from tests.support.server import Server  # noqa: E402


def gateway_command(http: httpx.Client, srv: Server, work: Path, context: Path) -> list[str]:
    r = call(
        http,
        srv.url,
        "depot.core.v1.ProjectService/CreateProject",
        project_pb.CreateProjectRequest(name="tap"),
        srv.admin_token,
    )
    project = r.message(project_pb.CreateProjectResponse).project
    assert project is not None
    build_id, token = new_build(http, srv, project.project_id)
    connection = until_active(http, srv, build_id, token).connection
    assert connection is not None
    details = connection.value
    assert isinstance(details, cli.GetBuildKitConnectionResponse.ActiveConnection)
    assert details.cert is not None and details.ca_cert is not None
    solve = [
        "build",
        "--frontend",
        "dockerfile.v0",
        "--local",
        f"context={context}",
        "--local",
        f"dockerfile={context}",
    ]
    return [*buildctl_via_gateway(details, work / f"certs-{srv.port}"), *solve]


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, capture_output=True, check=True, timeout=600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--context-mb", type=int, default=200)
    args = parser.parse_args()
    if (why := builds_possible()) is not None:
        sys.exit(f"bench/tap.py cannot run here: {why}")
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-tap-") as tmp:
        work = Path(tmp)
        context = work / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
        on = Server(data_dir=work / "on", database_url=None).start()
        off = Server(data_dir=work / "off", database_url=None, extra_args=["--status-tap", "false"]).start()
        try:
            with httpx.Client(timeout=60) as http:
                commands = {
                    "on": gateway_command(http, on, work, context),
                    "off": gateway_command(http, off, work, context),
                }
            times: dict[str, list[float]] = {"on": [], "off": []}
            for i in range(args.runs):
                for label in ("on", "off") if i % 2 == 0 else ("off", "on"):
                    (context / "payload").write_bytes(os.urandom(args.context_mb << 20))
                    times[label].append(timed(commands[label]))
        finally:
            on.stop()
            off.stop()
    with_tap, without = statistics.median(times["on"]), statistics.median(times["off"])
    ratio = without / with_tap
    mb = args.context_mb
    print(
        f"{mb} MB context through the gateway, median of {args.runs}: tap on {with_tap:.2f} s "
        f"({mb / with_tap:.0f} MB/s), tap off {without:.2f} s ({mb / without:.0f} MB/s), "
        f"ratio {ratio:.2f}  [target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}]"
    )


if __name__ == "__main__":
    main()
