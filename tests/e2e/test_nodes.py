"""Two `opendepot serve` nodes on one PostgreSQL: any node's API and gateway serve any build; the singular
duties run on one node and move when it dies. Nodes with their own data dirs share what they must through
the store (keys, sealed with the operator's --secret-key) and one S3 bucket (the registry's images)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from bench.build import BS, new_build, until_active
from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.sealed.box import new_key_text
from tests.e2e.test_build_lifecycle import SUCCESS
from tests.e2e.test_builds import build, new_project, step_states
from tests.e2e.test_registry import images, pull_token, saved_build, skopeo, wait_for
from tests.e2e.test_steps import run_steps, steps_of
from tests.support.builds import buildctl_via_gateway, builds_possible, busybox_context
from tests.support.cluster import HOST_ON_POD_BRIDGE, KUBECONFIG, needs_cluster
from tests.support.rpc import call
from tests.support.s3 import moto_server, s3_bucket
from tests.support.server import Server, create_postgres_database, drop_postgres_database, postgres_admin_url

pytestmark = [
    pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible())),
    pytest.mark.skipif(postgres_admin_url() is None, reason="several nodes share PostgreSQL (./dev test)"),
]
# server/singular.py: TTL 10 s, renewed every 2 s.
TAKEOVER_LIMIT_SECONDS = 15.0
KUBERNETES_GATEWAY_CIDR = f"{HOST_ON_POD_BRIDGE}/32"  # every node's gateway runs on the host


@pytest.fixture
def database() -> Iterator[str]:
    admin_url = postgres_admin_url()
    assert admin_url is not None
    url, name = create_postgres_database(admin_url)
    try:
        yield url
    finally:
        drop_postgres_database(admin_url, name)


def holder(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT holder FROM singular_leases WHERE name = 'singular-duties' AND expires_at > now()"
                )
            ).first()
            return None if row is None else str(row[0])
    finally:
        engine.dispose()


def supervisor_pid(node: Server) -> int:
    assert node.process is not None
    return node.process.pid


def test_two_nodes_share_builds_and_hand_over_the_singular_duties(database: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    nodes = []
    try:
        node_a = Server(data_dir=data_dir, database_url=database, extra_args=["--registry", "off"]).start(
            timeout=120
        )
        nodes.append(node_a)
        node_b = Server(data_dir=data_dir, database_url=database, extra_args=["--registry", "off"]).start(
            timeout=120
        )
        nodes.append(node_b)
        held_by = holder(database)
        assert held_by is not None and f":{supervisor_pid(node_a)}:" in held_by

        token = node_a.admin_token
        project = new_project(node_a, token, "two-nodes")
        context = busybox_context(tmp_path / "ctx", "echo from-node-b-gateway", "echo second-step")
        with httpx.Client(timeout=60) as http:
            # Created through node A's API; A (the holder) starts the builder.
            build_id, build_token = new_build(http, node_a, project)
            details = until_active(http, node_a, build_id, build_token).connection.value  # type: ignore[union-attr]
            # Through node B's gateway instead of the one A advertised.
            command = buildctl_via_gateway(details, tmp_path / "certs")
            command[command.index("--addr") + 1] = f"tcp://127.0.0.1:{node_b.buildkit_port}"
            solve = ["build", "--frontend", "dockerfile.v0", "--progress", "plain"]
            solve += ["--local", f"context={context}", "--local", f"dockerfile={context}"]
            solved = subprocess.run(
                [*command, *solve],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert solved.returncode == 0, solved.stderr
            assert "from-node-b-gateway" in solved.stderr
        # B's gateway recorded the steps; A's API reads them from the store.
        deadline = time.monotonic() + 30
        while len(run_steps(steps_of(node_a, token, project, build_id))) < 2:
            assert time.monotonic() < deadline, "node A never saw the steps recorded through node B"
            time.sleep(0.5)

        # A build solving through node B's gateway whose lease ends through node A's API: B's gateway cuts
        # its connection (the builder itself keeps running for --builder-idle-timeout, 120 s).
        with httpx.Client(timeout=60) as http:
            long_id, long_token = new_build(http, node_a, project)
            details = until_active(http, node_a, long_id, long_token).connection.value  # type: ignore[union-attr]
            command = buildctl_via_gateway(details, tmp_path / "certs-long")
            command[command.index("--addr") + 1] = f"tcp://127.0.0.1:{node_b.buildkit_port}"
            sleeper = busybox_context(tmp_path / "long", "sleep 300")
            solve = ["build", "--frontend", "dockerfile.v0", "--progress", "plain"]
            solve += ["--local", f"context={sleeper}", "--local", f"dockerfile={sleeper}"]
            running = subprocess.Popen(
                [*command, *solve], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            try:
                deadline = time.monotonic() + 60
                while not run_steps(steps_of(node_a, token, project, long_id)):
                    assert running.poll() is None, running.communicate()[1]
                    assert time.monotonic() < deadline, "the RUN step never started through node B"
                    time.sleep(0.3)
                call(
                    http,
                    node_a.url,
                    f"{BS}/FinishBuild",
                    cli.FinishBuildRequest(build_id=long_id, result=SUCCESS),
                    long_token,
                )
                ended = time.monotonic()
                _out, err = running.communicate(timeout=30)
                cut_after = time.monotonic() - ended
            finally:
                running.kill()
        assert running.returncode != 0, err
        print(f"node B's gateway cut the build {cut_after:.1f} s after node A's API ended its lease")
        assert cut_after < 5, cut_after

        # Node A's supervisor dies without a word: B takes the duties over, and builds through B work.
        os.kill(supervisor_pid(node_a), signal.SIGKILL)
        killed = time.monotonic()
        while True:
            held_by = holder(database)
            if held_by is not None and f":{supervisor_pid(node_b)}:" in held_by:
                break
            assert time.monotonic() - killed < TAKEOVER_LIMIT_SECONDS, f"still held by {held_by}"
            time.sleep(0.2)
        took_over = time.monotonic() - killed
        print(f"node B took over the singular duties {took_over:.1f} s after node A was killed")
        code, output = build(
            node_b, token, project, busybox_context(tmp_path / "after", "echo after-failover")
        )
        assert code == 0, output
        assert "after-failover" in output
        assert set(step_states(output).values()) == {"DONE"}
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def secret_key_file(tmp_path: Path) -> Path:
    """The key the operator gives every node (here a file; OPENDEPOT_SECRET_KEY works as well)."""
    path = tmp_path / "secret-key"
    path.write_text(new_key_text() + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.skipif(moto_server() is None, reason="moto_server is not installed (./dev setup)")
def test_nodes_with_their_own_data_dirs_share_keys_through_the_store_and_images_through_s3(
    database: str, secret_key_file: Path, tmp_path: Path
) -> None:
    nodes: list[Server] = []
    try:
        with s3_bucket(tmp_path / "moto.log") as bucket:
            common = ["--registry-storage", bucket.registry_storage(), "--workers", "1"]
            given_key = ["--secret-key-file", str(secret_key_file)]
            node_a = Server(tmp_path / "a", database, extra_args=[*common, *given_key])
            nodes.append(node_a.start(timeout=120))
            # A node started without the store's key refuses to start, and says why.
            stray = Server(tmp_path / "stray", database, extra_args=common)
            nodes.append(stray)
            with pytest.raises(RuntimeError, match="same --secret-key"):
                stray.start(timeout=120)
            node_b = Server(tmp_path / "b", database, extra_args=[*common, *given_key])
            nodes.append(node_b.start(timeout=120))

            token = node_a.admin_token
            project = new_project(node_a, token, "shared-images")
            # Pushed by a build through node A, into node A's registry.
            tag = saved_build(
                node_a, token, project, busybox_context(tmp_path / "ctx", "echo on-a > /marker")
            )
            digest = wait_for(
                lambda: next((i["digest"] for i in images(node_a, token, project) if i["tag"] == tag), None),
                "the pushed image listed",
            )

            # Pulled through node B's registry (the same bucket) with a pull token node B's API made.
            creds = f"x-token:{pull_token(node_b, token, project)}"
            on_b = f"{node_b.registry_host}/{project}"
            pulled = skopeo(
                "copy", "--src-tls-verify=false", "--src-creds", creds,
                f"docker://{on_b}:{tag}", f"oci:{tmp_path / 'pulled'}:{tag}",
            )  # fmt: skip
            assert pulled.returncode == 0, pulled.stderr

            # A registry token signed by node A's API, presented to node B's registry: accepted for pull...
            answer = httpx.get(
                f"{node_a.url}/registry/token",
                params={"service": "opendepot-registry", "scope": f"repository:{project}:pull,push"},
                auth=("x-token", token),
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            signed_by_a = answer.json()["token"]
            inspected = skopeo(
                "inspect", "--tls-verify=false", "--registry-token", signed_by_a, f"docker://{on_b}:{tag}"
            )
            assert inspected.returncode == 0, inspected.stderr
            assert json.loads(inspected.stdout)["Digest"] == digest
            # ... and for push: the new tag goes through node B, node B's registry tells node B's API, and
            # node A's API lists it (the store).
            pushed = skopeo(
                "copy", "--dest-tls-verify=false", "--dest-registry-token", signed_by_a,
                f"oci:{tmp_path / 'pulled'}:{tag}", f"docker://{on_b}:pushed-through-b",
            )  # fmt: skip
            assert pushed.returncode == 0, pushed.stderr
            wait_for(
                lambda: "pushed-through-b" in {i["tag"] for i in images(node_a, token, project)},
                "the tag pushed through node B listed by node A",
            )
            # A token node B never saw is no token at all for it.
            forged = skopeo(
                "inspect", "--tls-verify=false", "--registry-token", "e30.e30.e30", f"docker://{on_b}:{tag}"
            )
            assert forged.returncode != 0

            # The images are in the bucket, not in either data dir; no data dir holds a private key of the
            # registry's (the signing key is sealed in the store).
            keys = bucket.object_keys()
            assert any(f"/repositories/{project}/" in key for key in keys), keys[:20]
            for node in (node_a, node_b):
                assert not (node.data_dir / "registry" / "storage").exists()
                assert not (node.data_dir / "registry" / "token-key.pem").exists()
                assert (node.data_dir / "registry" / "token-cert.pem").exists()
                assert not list(node.data_dir.rglob("ca-key.pem"))
    finally:
        for node in nodes:
            node.stop()


@needs_cluster
def test_nodes_with_their_own_data_dirs_reach_pod_builders_with_the_keys_from_the_store(
    database: str, secret_key_file: Path, tmp_path: Path
) -> None:
    """Builders every node can reach (pods): a build made through node A's API runs in a pod node A started,
    reached through node B's gateway, which presents the link certificate and checks the pod's against the
    project CA — both made by node A, read by node B from the store."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))
    namespace = f"shared-nodes-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    pods = [
        "--builders", "kubernetes", "--kubeconfig", KUBECONFIG, "--namespace", namespace,
        "--storage-class", "opendepot-hostpath", "--gateway-cidrs", KUBERNETES_GATEWAY_CIDR,
        "--registry", "off", "--secret-key-file", str(secret_key_file), "--workers", "1",
    ]  # fmt: skip
    nodes: list[Server] = []
    try:
        node_a = Server(tmp_path / "a", database, extra_args=pods)
        nodes.append(node_a.start(timeout=180))
        node_b = Server(tmp_path / "b", database, extra_args=pods)
        nodes.append(node_b.start(timeout=180))
        token = node_a.admin_token
        project = new_project(node_a, token, "pods-two-nodes")
        context = busybox_context(tmp_path / "ctx", "echo in-a-pod-through-node-b")
        with httpx.Client(timeout=60) as http:
            build_id, build_token = new_build(http, node_a, project)
            details = until_active(http, node_a, build_id, build_token).connection.value  # type: ignore[union-attr]
            command = buildctl_via_gateway(details, tmp_path / "certs")
            command[command.index("--addr") + 1] = f"tcp://127.0.0.1:{node_b.buildkit_port}"
            solve = ["build", "--frontend", "dockerfile.v0", "--progress", "plain"]
            solve += ["--local", f"context={context}", "--local", f"dockerfile={context}"]
            solved = subprocess.run(
                [*command, *solve], capture_output=True, text=True, timeout=600, check=False
            )
            assert solved.returncode == 0, solved.stderr
            assert "in-a-pod-through-node-b" in solved.stderr
        assert [p.metadata.name for p in core.list_namespaced_pod(namespace).items]
        # The depot CLI through node B's API and gateway, to the same pod.
        code, output = build(
            node_b, token, project, busybox_context(tmp_path / "again", "echo via-node-b-api")
        )
        assert code == 0, output
        assert "via-node-b-api" in output
        # Both gateways hold the same link certificate, written from the store; no CA key is on either disk.
        link_a = (node_a.data_dir / "pki" / "_builder-links" / "client.pem").read_text()
        assert link_a == (node_b.data_dir / "pki" / "_builder-links" / "client.pem").read_text()
        for node in nodes:
            assert not list(node.data_dir.rglob("ca-key.pem"))
    finally:
        for node in nodes:
            node.stop()
        core.delete_namespace(namespace)
