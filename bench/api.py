"""Unary GetProject throughput and latency over h2c, against a trivial ASGI app on the same Hypercorn.

Both servers run as the product runs: `opendepot serve` with its defaults (SQLite, INFO logging, one worker
per CPU), and the baseline under the same supervisor, worker count, event loop and Hypercorn settings.
h2load (Debian's nghttp2-client) drives each with N connections of one stream each, writes per-request
timings, and this script prints RPC/s, p50 and p99 for both and the ratio, measured in this one run.

    ./dev bench            (or: .venv/bin/python bench/api.py [--requests-per-client N])
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from opendepot.gen.depot.core.v1 import project_pb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.server import Server, free_port  # noqa: E402

CONCURRENCY = (1, 16, 64)
TARGET_RPS = 2000
TARGET_P99_MS_AT_16 = 10.0


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int


def h2load(url: str, body: Path, headers: dict[str, str], clients: int, requests: int, log: Path) -> Result:
    args = [
        "h2load",
        "-c",
        str(clients),
        "-m",
        "1",
        "-n",
        str(requests),
        "-d",
        str(body),
        "--log-file",
        str(log),
    ]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True, timeout=600).stdout
    failed = int(out.split("requests:")[1].split("succeeded,")[1].split("failed")[0])
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    durations = sorted(int(r[2]) / 1000 for r in rows if r[1] == "200")
    starts = [int(r[0]) for r in rows]
    ends = [int(r[0]) + int(r[2]) for r in rows]
    elapsed = (max(ends) - min(starts)) / 1e6
    q = statistics.quantiles(durations, n=100, method="inclusive")
    return Result(rps=len(durations) / elapsed, p50_ms=q[49], p99_ms=q[98], failed=failed)


def measure(
    name: str, url: str, body: Path, headers: dict[str, str], per_client: int, work: Path
) -> dict[int, Result]:
    # h2load appends to its log file: every run gets a file of its own.
    results = {}
    for clients in CONCURRENCY:
        h2load(url, body, headers, clients, max(200, clients * 20), work / f"{name}-warmup-{clients}.log")
        requests = max(3000, clients * per_client)
        results[clients] = h2load(url, body, headers, clients, requests, work / f"{name}-run-{clients}.log")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests-per-client", type=int, default=400)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("bench/api.py needs h2load: apt-get install nghttp2-client (./dev bench does it)")
    workers = min(os.cpu_count() or 1, 4)
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-") as tmp:
        work = Path(tmp)
        server = Server(data_dir=work / "data", database_url=None).start()
        port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "trivial_app.py"), f"127.0.0.1:{port}", str(workers)],
            cwd=ROOT,
        )
        try:
            token = server.admin_token
            with httpx.Client() as http:
                created = http.post(
                    f"{server.url}/depot.core.v1.ProjectService/CreateProject",
                    json={"name": "bench"},
                    headers={"authorization": f"Bearer {token}"},
                )
                project_id = created.json()["project"]["projectId"]
                deadline = time.monotonic() + 20
                while True:
                    try:
                        http.post(f"http://127.0.0.1:{port}/ready", content=b"")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
            body = work / "request.bin"
            body.write_bytes(project_pb.GetProjectRequest(project_id=project_id).to_binary())
            headers = {"content-type": "application/proto", "connect-protocol-version": "1"}
            ours = measure(
                "opendepot",
                f"{server.url}/depot.core.v1.ProjectService/GetProject",
                body,
                {**headers, "authorization": f"Bearer {token}"},
                args.requests_per_client,
                work,
            )
            base = measure(
                "baseline",
                f"http://127.0.0.1:{port}/depot.core.v1.ProjectService/GetProject",
                body,
                headers,
                args.requests_per_client,
                work,
            )
        finally:
            baseline.terminate()
            baseline.wait(timeout=20)
            server.stop()

    print(
        f"\nGetProject over h2c, {workers} worker(s) each, {os.cpu_count()} CPUs, h2load on the same machine"
    )
    print(
        f"{'clients':>7} | {'opendepot RPC/s':>15} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'baseline RPC/s':>14} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5}"
    )
    for c in CONCURRENCY:
        o, b = ours[c], base[c]
        print(
            f"{c:>7} | {o.rps:>15.0f} {o.p50_ms:>7.2f} {o.p99_ms:>7.2f} | "
            f"{b.rps:>14.0f} {b.p50_ms:>7.2f} {b.p99_ms:>7.2f} | {o.rps / b.rps:>5.2f}"
        )
    best = max(r.rps for r in ours.values())
    print(f"\ntarget >= {TARGET_RPS} RPC/s: best {best:.0f} -> {'met' if best >= TARGET_RPS else 'NOT met'}")
    p99 = ours[16].p99_ms
    print(
        f"target p99 < {TARGET_P99_MS_AT_16:.0f} ms at 16 clients: {p99:.2f} ms -> "
        f"{'met' if p99 < TARGET_P99_MS_AT_16 else 'NOT met'}"
    )
    failures = sum(r.failed for r in ours.values())
    print(
        json.dumps(
            {
                "clients": {str(c): vars(ours[c]) for c in CONCURRENCY},
                "baseline": {str(c): vars(base[c]) for c in CONCURRENCY},
                "failed": failures,
            }
        )
    )
    if failures:
        sys.exit(f"{failures} requests failed")


if __name__ == "__main__":
    main()
