"""The status tap's cost: a 200 MB build context through the gateway with the tap on vs off.

Two servers on this machine, identical but for --status-tap. Each run builds `FROM scratch` + `COPY` of a
fresh random file with buildctl through each gateway (issued certificates), alternating which goes first;
prints the median times and the ratio tap-on throughput / tap-off throughput.   target: >= 0.95

With --frames, the tap alone instead: the CPU time `StatusTap` spends on both directions of a build's HTTP/2
traffic, made here in the shape of a captured 200 MB context transfer (~29,000 frames up, most of them DATA
between 4 and 32 KiB, with the session's small frames between; a Status stream's messages down), fed in the
relay's pass sizes. With --baseline-src (e.g. `git archive <commit> src | tar -x -C /tmp/base`) the same
frames go through that code's tap too, alternating, and the ratio is printed.

    .venv/bin/python bench/tap.py [--runs N] [--context-mb M]
    .venv/bin/python bench/tap.py --frames [--runs N] [--context-mb M] [--baseline-src DIR]
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


# One pass of the relay's client direction reads up to 256 KiB; a build's passes averaged ~150 KB.
PASS_BYTES = 150_000
STATUS_STREAM = 3
SESSION_STREAM = 1


def _frame(kind: int, stream: int, payload: bytes, flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def synthetic_traffic(mb: int) -> tuple[bytes, bytes]:
    """(client to builder, builder to client) bytes of a build session moving `mb` MB of context."""
    import hpack

    from opendepot.gateway.tap import PREFACE, STATUS_PATH

    def request(stream: int, path: bytes) -> bytes:
        block = hpack.Encoder().encode([(b":method", b"POST"), (b":scheme", b"https"), (b":path", path)])
        return _frame(0x1, stream, block, flags=0x4)

    payload = os.urandom(16 << 10)
    up = bytearray(PREFACE)
    up += _frame(0x4, 0, b"")  # SETTINGS
    up += request(SESSION_STREAM, b"/moby.buildkit.v1.Control/Session")
    up += request(STATUS_STREAM, STATUS_PATH)
    # The captured mix per ~41 KiB of context: DATA of 8, 16 and 16 KiB and a ~20-byte one; a PING ack.
    while len(up) < mb << 20:
        for size in (8 << 10, 16 << 10, 16 << 10, 20):
            up += _frame(0x0, SESSION_STREAM, payload[:size])
        up += _frame(0x6, 0, bytes(8), flags=0x1)
    down = bytearray()
    status = b"\x00" + (200).to_bytes(4, "big") + os.urandom(200)  # gRPC: uncompressed, 200 bytes
    for k in range(len(up) // (70 << 10)):  # the builder's WINDOW_UPDATEs and PINGs, and its status
        down += _frame(0x8, 0, (1 << 16).to_bytes(4, "big"))
        down += _frame(0x6, 0, bytes(8))
        if k % 40 == 0:
            down += _frame(0x0, STATUS_STREAM, status)
    down += _frame(0x1, STATUS_STREAM, b"", flags=0x5)  # trailers: the Status stream ends
    return bytes(up), bytes(down)


def tap_seconds(mb: int, runs: int) -> None:
    """In a child process (its sys.path picks the tree): prints the CPU seconds of each run as JSON."""
    import json

    from opendepot.gateway.tap import StatusTap

    up, down = synthetic_traffic(mb)
    seconds, seen = [], 0
    for _ in range(runs):
        statuses: list[bytes] = []
        tap = StatusTap(statuses.append)
        up_view, down_view = memoryview(up), memoryview(down)
        start = time.process_time()
        for i in range(0, len(up), PASS_BYTES):
            tap.from_client(up_view[i : i + PASS_BYTES])
            j = i * len(down) // len(up)
            tap.from_server(down_view[j : (i + PASS_BYTES) * len(down) // len(up)])
        seconds.append(time.process_time() - start)
        seen = len(statuses) if tap.enabled else -1
    print(json.dumps({"seconds": seconds, "statuses": seen}))


def frames_main(args: argparse.Namespace) -> None:
    import json

    sides = {"tap": ROOT / "src"}
    if args.baseline_src:
        sides["@baseline"] = args.baseline_src.resolve()
    times: dict[str, list[float]] = {side: [] for side in sides}
    statuses = {}
    for i in range(args.runs):
        for side in list(sides)[i % len(sides) :] + list(sides)[: i % len(sides)]:
            out = subprocess.run(
                [sys.executable, __file__, "--tap-seconds", str(args.context_mb)],
                env={**os.environ, "PYTHONPATH": f"{sides[side]}{os.pathsep}{ROOT}"},
                capture_output=True,
                check=True,
                text=True,
            )
            result = json.loads(out.stdout)
            times[side].append(min(result["seconds"]))  # the best of 3 in one process: no warm-up noise
            statuses[side] = result["statuses"]
    mb = args.context_mb
    print(f"bench/tap.py --frames: the tap alone over {mb} MB of a build's traffic, CPU ms")
    print("  (min / median / max):")
    for side, values in times.items():
        print(
            f"  {side:<10} {min(values) * 1000:6.1f} / {statistics.median(values) * 1000:6.1f} /"
            f" {max(values) * 1000:6.1f}  ({statistics.median(values) * 1000 / mb:.3f} ms/MB;"
            f" {statuses[side]} status messages seen)"
        )
    if "@baseline" in times:
        ratio = statistics.median(times["@baseline"]) / statistics.median(times["tap"])
        print(f"  @baseline / tap: {ratio:.2f}x (above 1: this tree's tap is cheaper)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--context-mb", type=int, default=200)
    parser.add_argument("--frames", action="store_true", help="the tap alone, over synthetic traffic")
    parser.add_argument("--baseline-src", type=Path, help="with --frames: another tree's src to compare")
    parser.add_argument("--tap-seconds", type=int, help=argparse.SUPPRESS)  # the child of --frames
    args = parser.parse_args()
    if args.tap_seconds:
        tap_seconds(args.tap_seconds, 3)
        return
    if args.frames:
        frames_main(args)
        return
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
