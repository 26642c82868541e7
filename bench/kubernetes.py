"""Builders as Kubernetes pods, against local builders measured in the same run.

(a) Pod cold start: from no pod (the project's cache volume exists: an idle builder) until
    GetBuildKitConnection says `active`, p50/p95 over --runs.            goal: <= 5 s
    The very first start of a project (volume provisioned too) is shown apart.
(b) Warm acquire: GetBuildKitConnection of a new build while the pod runs, p50/p95; the same on a local
    builder is the baseline.                                            goal: p95 <= 100 ms
(c) A --context-mb build context with buildctl through the gateway: to the pod (gateway -> pod, mTLS over
    the cluster network) vs to a local builder (gateway -> unix socket); a fresh random file each run,
    runs alternated; ratio local time / pod time.

Needs the test cluster: `./dev k8s up` prints the kubeconfig to pass as --kubeconfig.

    .venv/bin/python bench/kubernetes.py --kubeconfig .k8s/etc/admin.kubeconfig [--runs N] [--context-mb M]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from protobuf import Oneof

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and its name would hide the kubernetes package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
from bench.build import create_project as new_project  # noqa: E402
from bench.build import get_connection, new_build, percentile, timed, until_active  # noqa: E402
from bench.realistic_app import machine_note  # noqa: E402
from opendepot.gen.depot.cli.v1 import build_pb as cli  # noqa: E402
from tests.support.builds import buildctl_via_gateway, builds_possible  # noqa: E402
from tests.support.rpc import call  # noqa: E402
from tests.support.server import Server  # noqa: E402

BS = "depot.cli.v1.BuildService"
IDLE_SECONDS = 1


def finish(http: httpx.Client, srv: Server, build_id: str, token: str) -> None:
    """Ends the build: its lease goes, and the builder idles out."""
    success: Oneof[Literal["success"], cli.FinishBuildRequest.BuildSuccess] = Oneof(
        "success", cli.FinishBuildRequest.BuildSuccess()
    )
    request = cli.FinishBuildRequest(build_id=build_id, result=success)
    reply = call(http, srv.url, f"{BS}/FinishBuild", request, token)
    assert reply.status == 200, reply.body


def wait_until(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def stats(values: list[float]) -> str:
    return (
        f"min {min(values):.0f}, p50 {percentile(values, 50):.0f}, p95 {percentile(values, 95):.0f}, "
        f"max {max(values):.0f} ms"
    )


def warm_acquires(http: httpx.Client, srv: Server, project: str, calls: int) -> tuple[list[float], Any]:
    """Keeps one build's lease (the builder stays up), then times GetBuildKitConnection of new builds."""
    holder, holder_token = new_build(http, srv, project)
    active = until_active(http, srv, holder, holder_token)
    times = []
    for _ in range(calls):
        b, t = new_build(http, srv, project)
        start = time.perf_counter()
        response = get_connection(http, srv, b, t)
        times.append((time.perf_counter() - start) * 1000)
        assert response.connection is not None and response.connection.field == "active"
    return times, active


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warm-calls", type=int, default=50)
    parser.add_argument("--context-mb", type=int, default=100)
    args = parser.parse_args()
    if (why := builds_possible()) is not None:
        sys.exit(f"bench/kubernetes.py cannot run here: {why}")
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    namespace = f"opendepot-bench-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})

    def pods(project: str) -> list[Any]:
        """The project's pods, terminating ones too: the builder counts as stopped once its pod is gone."""
        selector = f"opendepot.dev/project={project}"
        return list(core.list_namespaced_pod(namespace, label_selector=selector).items)

    with tempfile.TemporaryDirectory(prefix="opendepot-bench-k8s-") as tmp:
        work = Path(tmp)
        pod_server = Server(
            data_dir=work / "k8s" / "data",
            database_url=None,
            extra_args=[
                *("--builders", "kubernetes", "--kubeconfig", args.kubeconfig, "--namespace", namespace),
                *("--storage-class", "opendepot-hostpath", "--builder-idle-timeout", str(IDLE_SECONDS)),
            ],
        )
        local_server = Server(data_dir=work / "local" / "data", database_url=None)
        (work / "k8s").mkdir()
        (work / "local").mkdir()
        try:
            pod_server.start(timeout=120)
            local_server.start(timeout=120)
            with httpx.Client(timeout=120) as http:
                # (a) cold starts: finish the build, wait until the idle pod is gone, acquire again.
                project = new_project(http, pod_server, "bench-k8s")
                cold: list[float] = []
                first = 0.0
                for i in range(args.runs + 1):
                    wait_until("no builder pod", lambda: not pods(project))
                    time.sleep(0.5)  # the reconciler records the stop right after the pod is gone
                    b, t = new_build(http, pod_server, project)
                    start = time.perf_counter()
                    until_active(http, pod_server, b, t)
                    elapsed = (time.perf_counter() - start) * 1000
                    if i == 0:
                        first = elapsed
                    else:
                        cold.append(elapsed)
                    finish(http, pod_server, b, t)

                # (b) warm acquires: pod vs local builder.
                pod_warm, pod_active = warm_acquires(http, pod_server, project, args.warm_calls)
                local_project = new_project(http, local_server, "bench-local")
                local_warm, local_active = warm_acquires(http, local_server, local_project, args.warm_calls)

                # (c) context throughput through each server's gateway.
                big = work / "big"
                big.mkdir()
                (big / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
                solve = ["build", "--frontend", "dockerfile.v0", "--local", f"context={big}"]
                solve += ["--local", f"dockerfile={big}"]
                commands = {
                    "pod": [*buildctl_via_gateway(pod_active.connection.value, work / "c-pod"), *solve],
                    "local": [*buildctl_via_gateway(local_active.connection.value, work / "c-local"), *solve],
                }
                times: dict[str, list[float]] = {"pod": [], "local": []}
                for i in range(args.runs):
                    for label in ("pod", "local") if i % 2 == 0 else ("local", "pod"):
                        (big / "payload").write_bytes(os.urandom(args.context_mb << 20))
                        times[label].append(timed(commands[label]))
        except Exception:
            print(pod_server.log_path.read_text()[-5000:], file=sys.stderr)
            raise
        finally:
            pod_server.stop()
            local_server.stop()
            core.delete_namespace(namespace)

    cold_p95 = percentile(cold, 95)
    print(f"\n{machine_note()}; {args.runs} runs each")
    print(f"(a) first start of a project (volume provisioned too): {first:.0f} ms")
    print(
        f"    pod cold start, no pod -> active: {stats(cold)}"
        f"  [goal <= 5000 ms: {'met' if cold_p95 <= 5000 else 'NOT met'} at p95]"
    )
    pod_p95, local_p95 = percentile(pod_warm, 95), percentile(local_warm, 95)
    met = "met" if pod_p95 <= 100 else "NOT met"
    print(f"(b) warm acquire, pod: {stats(pod_warm)}  [goal p95 <= 100 ms: {met}]")
    print(f"    warm acquire, local builder (baseline): {stats(local_warm)}")
    print(f"    ratio pod/local p95 {pod_p95 / local_p95:.2f}")
    mb = args.context_mb
    pod_median, local_median = statistics.median(times["pod"]), statistics.median(times["local"])
    print(
        f"(c) {mb} MB context through the gateway: to the pod median {pod_median:.2f} s "
        f"({mb / pod_median:.0f} MB/s, min {min(times['pod']):.2f}, max {max(times['pod']):.2f}), "
        f"to a local builder median "
        f"{local_median:.2f} s ({mb / local_median:.0f} MB/s, min {min(times['local']):.2f}, "
        f"max {max(times['local']):.2f}); ratio local/pod {local_median / pod_median:.2f}"
    )


if __name__ == "__main__":
    main()
