"""The registry behind opendepot's token auth vs the same registry without auth, and ListImages at scale.

(a) Push and pull of an image with one 200 MB layer, by skopeo: to/from the registry `opendepot serve` runs
    (token auth: skopeo fetches a JWT from opendepot, the registry verifies it, notifications flow back) and
    to/from a second docker-registry process with the same binary and storage driver and no auth, started in
    its own session as opendepot starts its own. Each run uses a fresh random layer (no dedup), alternating
    which registry goes first; three pulls each per run. Prints median seconds and the ratio auth
    throughput / no-auth throughput.   target: >= 0.95
(b) ListImages latency (median over calls, first page of 10) for a project with 10 images and one with
    10,000, both in the same store. Prints the ratio large / small.   target: <= 1.5

    .venv/bin/python bench/registry.py [--runs N] [--layer-mb M]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from opendepot.gen.depot.build.v1 import registry_pb  # noqa: E402
from opendepot.gen.depot.core.v1 import project_pb  # noqa: E402
from opendepot.migrations.schema import Image  # noqa: E402
from opendepot.store import Store  # noqa: E402
from opendepot.store.engine import sqlite_url  # noqa: E402
from tests.support.rpc import call  # noqa: E402
from tests.support.server import Server, free_port  # noqa: E402


def oci_image(directory: Path, layer_mb: int) -> None:
    """An OCI layout holding one image whose only layer is layer_mb MiB of random bytes."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer = blob(os.urandom(layer_mb << 20))
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode()
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
            }
        ).encode()
    )
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))


def skopeo_copy(source: str, destination: str, creds: str | None, push: bool) -> float:
    flag = "--dest" if push else "--src"
    args = ["skopeo", "copy", f"{flag}-tls-verify=false", source, destination]
    if creds:
        args.insert(2, f"{flag}-creds={creds}")
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def plain_registry(work: Path, port: int) -> subprocess.Popen[bytes]:
    config = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(work / "plain-storage")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "bench"},
    }
    (work / "plain.json").write_text(json.dumps(config))
    # Its own session, as opendepot starts its registry: with the kernel's autogroup scheduling a session
    # is a scheduling group, and a registry sharing skopeo's group measured faster for that reason alone.
    process = subprocess.Popen(
        ["docker-registry", "serve", str(work / "plain.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(100):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the plain registry did not start")


def new_project(http: httpx.Client, srv: Server, name: str) -> str:
    r = call(
        http,
        srv.url,
        "depot.core.v1.ProjectService/CreateProject",
        project_pb.CreateProjectRequest(name=name),
        srv.admin_token,
    )
    project = r.message(project_pb.CreateProjectResponse).project
    assert project is not None
    return project.project_id


def transfer(srv: Server, http: httpx.Client, work: Path, runs: int, layer_mb: int) -> None:
    project = new_project(http, srv, "bench-transfer")
    port = free_port()
    plain = plain_registry(work, port)
    creds = f"x-token:{srv.admin_token}"
    times: dict[str, list[float]] = {"auth push": [], "plain push": [], "auth pull": [], "plain pull": []}
    try:
        for run in range(runs):
            image = work / f"image-{run}"
            oci_image(image, layer_mb)
            targets = [
                ("auth", f"docker://{srv.registry_host}/{project}:run{run}", creds),
                ("plain", f"docker://127.0.0.1:{port}/bench:run{run}", None),
            ]
            if run % 2:
                targets.reverse()
            for name, reference, c in targets:
                times[f"{name} push"].append(skopeo_copy(f"oci:{image}:bench", reference, c, push=True))
            # Pulls are cheaper than pushes and as noisy: three of each, interleaved a b b a a b.
            for name, reference, c in [*targets, *reversed(targets), *targets]:
                pulled = work / f"pulled-{name}-{run}"
                times[f"{name} pull"].append(skopeo_copy(reference, f"oci:{pulled}:bench", c, push=False))
                subprocess.run(["rm", "-rf", str(pulled)], check=True)
            subprocess.run(["rm", "-rf", str(image)], check=True)
        per_request(srv, http, project, port, runs)
    finally:
        plain.terminate()
        plain.wait()
    medians = {k: statistics.median(v) for k, v in times.items()}
    for direction in ("push", "pull"):
        auth, bare = medians[f"auth {direction}"], medians[f"plain {direction}"]
        print(
            f"(a) {direction} {layer_mb} MiB: token auth {auth:.2f} s ({layer_mb / auth:.0f} MiB/s), "
            f"no auth {bare:.2f} s ({layer_mb / bare:.0f} MiB/s); ratio {bare / auth:.2f}   target >= 0.95"
        )


def per_request(srv: Server, http: httpx.Client, project: str, port: int, runs: int) -> None:
    """What token auth adds per copy, without the transfer's noise: one token fetch from opendepot, and a
    manifest read with a bearer token vs without auth."""
    basic = base64.b64encode(f"x-token:{srv.admin_token}".encode()).decode()
    params = {"scope": f"repository:{project}:pull", "service": "opendepot-registry"}

    def median_ms(fn: Callable[[], httpx.Response]) -> float:
        samples = []
        for _ in range(200):
            start = time.perf_counter()
            assert fn().status_code == 200
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000

    def fetch() -> httpx.Response:
        return http.get(
            f"{srv.url}/registry/token", params=params, headers={"Authorization": f"Basic {basic}"}
        )

    token = fetch().json()["token"]
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    authed = median_ms(
        lambda: http.get(
            f"http://{srv.registry_host}/v2/{project}/manifests/run{runs - 1}",
            headers={**accept, "Authorization": f"Bearer {token}"},
        )
    )
    bare = median_ms(
        lambda: http.get(f"http://127.0.0.1:{port}/v2/bench/manifests/run{runs - 1}", headers=accept)
    )
    print(
        f"(a) per copy: token fetch {median_ms(fetch):.2f} ms (once per copy and scope); "
        f"manifest read with a bearer token {authed:.2f} ms vs without auth {bare:.2f} ms"
    )


def list_latency(srv: Server, http: httpx.Client, calls: int) -> None:
    small, large = new_project(http, srv, "ten"), new_project(http, srv, "ten-thousand")
    store = Store(srv.database_url or sqlite_url(srv.data_dir))
    now = datetime.now(UTC)
    rows = [
        {
            "project_id": project,
            "tag": f"t{i:05d}",
            "digest": "sha256:" + hashlib.sha256(f"{project}{i}".encode()).hexdigest(),
            "media_type": "application/vnd.oci.image.index.v1+json",
            "size_bytes": 1000 + i,
            "pushed_at": now - timedelta(seconds=i),
        }
        for project, count in ((small, 10), (large, 10_000))
        for i in range(count)
    ]
    with store.transaction() as session:
        session.execute(insert(Image), rows)
    store.dispose()

    def median_ms(project: str) -> float:
        request = registry_pb.ListImagesRequest(project_id=project, page_size=10)
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            reply = call(http, srv.url, "depot.build.v1.RegistryService/ListImages", request, srv.admin_token)
            samples.append(time.perf_counter() - start)
            assert len(reply.message(registry_pb.ListImagesResponse).images) == 10
        return statistics.median(samples) * 1000

    median_ms(small), median_ms(large)  # warm both
    a, b = median_ms(small), median_ms(large)
    print(
        f"(b) ListImages, first page of 10: 10 images {a:.2f} ms, 10,000 images {b:.2f} ms; "
        f"ratio {b / a:.2f}   target <= 1.5"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=200)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    # In memory when possible: disk writeback on this small machine is noisier than what is measured.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 8 << 30 else None
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-registry-", dir=shm) as tmp:
        work = Path(tmp)
        srv = Server(data_dir=work / "data", database_url=None, extra_args=["--workers", "1"]).start()
        try:
            with httpx.Client(timeout=60) as http:
                transfer(srv, http, work, args.runs, args.layer_mb)
                list_latency(srv, http, args.calls)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
