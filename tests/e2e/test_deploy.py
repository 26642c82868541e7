"""opendepot deployed into the test cluster by its own Helm chart, from the image it built of itself.

1. `scripts/image/build.sh all` (`./dev image`): the official `depot build --push` through an
   `opendepot serve` on the host builds deploy/image/Dockerfile FROM the project's seeded Debian base and
   the buildkitd image of the builder pods, and pushes `<registry>/<project>/opendepot:<version>` and
   `<registry>/<project>/buildkitd:<version>` into that server's registry.
2. The cluster's containerd pulls both from there (`ctr images pull`, with the project's token; the kubelet
   itself could only with a registry configuration the shared cluster was not started with, so the pods
   find them present: `imagePullPolicy: Never` for opendepot, IfNotPresent for builders).
3. `helm install deploy/helm/opendepot`: SQLite on the data volume (one replica), builders in their own
   namespace, the pod Ready.
4. `depot build` with RUN steps from the host against the pod's API (its IP on the odk8s0 bridge): the
   builder is a pod the in-cluster opendepot created with its service account (RBAC only in the builder
   namespace) and reached through its gateway (the cluster's firewall admits the opendepot pod, and only
   it, to builder pods: scripts/k8s/cluster.sh).

Skips only when the cluster is not there, like tests/e2e/test_kubernetes.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.e2e.test_builds import new_project, step_states
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import depot
from tests.support.cluster import HOST_ON_POD_BRIDGE, KUBECONFIG, needs_cluster
from tests.support.helm import CHART, helm, helm_binary
from tests.support.server import Server

REPO = Path(__file__).resolve().parents[2]
HOST_IP = HOST_ON_POD_BRIDGE

pytestmark = [
    pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible())),
    needs_cluster,
    pytest.mark.skipif(helm_binary() is None, reason="no helm: ./dev test builds it once"),
]


def kubectl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [str(REPO / "scripts/k8s/cluster.sh"), "kubectl", "--kubeconfig", KUBECONFIG, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)


def containerd_socket() -> Path:
    # The cluster's state dir holds etc/admin.kubeconfig and run/containerd/containerd.sock.
    return Path(KUBECONFIG).resolve().parents[1] / "run/containerd/containerd.sock"


def apiserver_port() -> int:
    server = str(yaml.safe_load(Path(KUBECONFIG).read_text())["clusters"][0]["cluster"]["server"])
    port = urlparse(server).port
    assert port is not None, server
    return port


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    """Debian's ctr on the cluster's containerd, in the kubelet's namespace."""
    command = ["ctr", "--address", str(containerd_socket()), "-n", "k8s.io", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)


@pytest.fixture(scope="module")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """{"opendepot": reference, "buildkitd": reference}: both images, built by opendepot on the host with
    `./dev image all`, pushed to its registry, and pulled from there by the cluster's containerd."""
    server = Server(data_dir=tmp_path_factory.mktemp("image-builder") / "data", database_url=None)
    server.start(timeout=120)
    pulled: list[str] = []
    try:
        _org, token = server.new_organization()
        project = new_project(server, token, "opendepot-image")
        env = {**os.environ, "DEPOT_API_URL": server.url, "DEPOT_TOKEN": token}
        started = time.monotonic()
        result = subprocess.run(
            [
                str(REPO / "scripts/image/build.sh"),
                *("all", "--project", project, "--registry", server.registry_host, "--insecure"),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=1500,
        )
        assert result.returncode == 0, result.stderr[-6000:]
        print(f"\nopendepot and buildkitd images built and pushed in {time.monotonic() - started:.0f} s")
        references = result.stdout.strip().splitlines()[-2:]
        assert references == [
            f"{server.registry_host}/{project}/opendepot:0.1.0",
            f"{server.registry_host}/{project}/buildkitd:v0.34.2",
        ], result.stdout
        # Two `depot build --push` runs of the project, both finished.
        listed = depot(server.url, token, "list", "builds", "--project", project, "--output", "json")
        assert listed.returncode == 0, listed.stderr
        assert [b["status"] for b in json.loads(listed.stdout)] == ["finished", "finished"], listed.stdout
        for reference in references:
            fetched = ctr("images", "pull", "--plain-http", "--user", f"x-token:{token}", reference)
            assert fetched.returncode == 0, fetched.stderr + fetched.stdout
            pulled.append(reference)
        assert set(references) <= set(ctr("images", "ls", "-q").stdout.split())
        yield {"opendepot": references[0], "buildkitd": references[1]}
    finally:
        server.stop()
        if pulled:
            ctr("images", "rm", *pulled)


@pytest.fixture(scope="module")
def release(
    built_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    repository, tag = built_images["opendepot"].rsplit(":", 1)
    name = f"image-deploy-{uuid.uuid4().hex[:6]}"
    builders = f"{name}-builders"
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "builders": {
            "namespace": builders,
            "image": built_images["buildkitd"],
            "storageClass": "opendepot-hostpath",
            "idleTimeout": "60",
        },
        # hostPath volumes ignore fsGroup: the init container hands the data dir to opendepot's uid.
        "persistence": {"size": "1Gi", "storageClass": "opendepot-hostpath", "chownData": True},
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        },
        "workers": "1",
        # This cluster has no kube-proxy: the API server is reached on the bridge under a name its
        # certificate carries (a real cluster needs neither).
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "kubernetes.default.svc"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(apiserver_port())},
        ],
        "hostAliases": [{"ip": HOST_IP, "hostnames": ["kubernetes.default.svc"]}],
    }
    values_file = tmp_path_factory.mktemp("helm") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    installed = helm(
        "install", name, str(CHART), "--kubeconfig", KUBECONFIG, "--namespace", name, "--create-namespace",
        "--values", str(values_file), "--wait", "--timeout", "300s",
    )  # fmt: skip
    try:
        assert installed.returncode == 0, installed.stderr + describe(name)
        yield {
            "name": name,
            "namespace": name,
            "builders": builders,
            "builder_image": built_images["buildkitd"],
        }
    finally:
        helm(
            "uninstall", name, "--kubeconfig", KUBECONFIG, "--namespace", name, "--wait", "--timeout", "120s"
        )
        kubectl("delete", "namespace", builders, name, "--wait=false")


def describe(namespace: str) -> str:
    pods = kubectl("describe", "pods", "-n", namespace).stdout
    logs = kubectl("logs", "-n", namespace, "-l", "app.kubernetes.io/name=opendepot", "--tail=40").stdout
    return f"\n{pods[-4000:]}\n{logs}"


def opendepot_pod(release: dict[str, str]) -> dict[str, Any]:
    listed = kubectl(
        "get", "pods", "-n", release["namespace"], "-l", "app.kubernetes.io/name=opendepot", "-o", "json"
    )
    assert listed.returncode == 0, listed.stderr
    [pod] = [p for p in json.loads(listed.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    return dict(pod)


def test_the_chart_installs_the_self_built_image_and_builds_through_it(
    release: dict[str, str], tmp_path: Path
) -> None:
    pod = opendepot_pod(release)
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    [main] = pod["spec"]["containers"]
    assert main["image"].endswith("/opendepot:0.1.0")
    # Not root: the image's user and the chart's pod security context.
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    whoami = kubectl(
        "exec", "-n", release["namespace"], pod["metadata"]["name"], "-c", "opendepot", "--", "id", "-u"
    )
    assert whoami.stdout.strip() == "1000", whoami.stderr
    token = kubectl(
        "exec", "-n", release["namespace"], pod["metadata"]["name"], "-c", "opendepot",
        "--", "cat", "/var/lib/opendepot/admin-token",
    ).stdout.strip()  # fmt: skip
    assert token.startswith("odo_")
    # The supervisor asks builder pods through BuildKit's own client: the image carries one that runs.
    buildctl = kubectl(
        "exec", "-n", release["namespace"], pod["metadata"]["name"], "-c", "opendepot",
        "--", "buildctl", "--version",
    )  # fmt: skip
    assert buildctl.returncode == 0 and "buildkit" in buildctl.stdout, buildctl.stdout + buildctl.stderr

    # The API Service's pod, straight over the bridge (the host routes there; no NodePort).
    api = f"http://{pod['status']['podIP']}:8080"
    created = depot(api, token, "projects", "create", "in-cluster")
    assert created.returncode == 0, created.stderr
    project = json.loads(created.stdout)["project_id"]
    context = busybox_context(tmp_path / "ctx", "echo built-by-the-deployed-opendepot > /f", "cat /f")
    result = depot(
        api, token, "build", "--project", project, "--progress", "plain", str(context), timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + describe(release["namespace"])
    assert set(step_states(output).values()) == {"DONE"}, step_states(output)
    assert "built-by-the-deployed-opendepot" in output
    listed = depot(api, token, "list", "builds", "--project", project, "--output", "json")
    assert [b["status"] for b in json.loads(listed.stdout)] == ["finished"], listed.stderr

    # Its builder: a pod the in-cluster opendepot made in the builder namespace with its own RBAC.
    builder = kubectl(
        "get", "pods", "-n", release["builders"], "-l", f"opendepot.dev/project={project}", "-o", "json"
    )
    [builder_pod] = json.loads(builder.stdout)["items"]
    assert builder_pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "opendepot"
    assert builder_pod["metadata"]["name"] == f"buildkitd-{project}-amd64"
    # ... running the buildkitd image opendepot built of itself and pulled from its own registry.
    assert builder_pod["spec"]["containers"][0]["image"] == release["builder_image"]

    # The builder's buildkitd port admits the opendepot pod (the gateway) and no other pod.
    target = builder_pod["status"]["podIP"]
    gateway = kubectl(
        "exec", "-n", release["namespace"], pod["metadata"]["name"], "-c", "opendepot",
        "--", "python3", "-c", DIAL, target,
    )  # fmt: skip
    assert gateway.stdout.strip() == "connected", gateway.stdout + gateway.stderr
    assert dial_from_another_pod(release, main["image"], target) == "dropped"


# Connects to port 1234 of the address given: "connected", or "dropped" when nothing answers.
DIAL = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 1234), timeout=3).close()
    print("connected")
except TimeoutError:
    print("dropped")
except OSError as error:
    print(f"refused: {error}")
"""


def dial_from_another_pod(release: dict[str, str], image: str, target: str) -> str:
    """DIAL from a pod of the same image and namespace without opendepot's label."""
    name = "dial-probe"
    started = kubectl(
        "run", name, "-n", release["namespace"], f"--image={image}", "--image-pull-policy=Never",
        "--restart=Never", "--labels=app.kubernetes.io/name=probe",
        "--command", "--", "python3", "-c", DIAL, target,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        done = kubectl(
            "wait", "-n", release["namespace"], f"pod/{name}", "--for=jsonpath={.status.phase}=Succeeded",
            "--timeout=120s",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + describe(release["namespace"])
        return kubectl("logs", "-n", release["namespace"], name).stdout.strip()
    finally:
        kubectl("delete", "pod", "-n", release["namespace"], name, "--wait=false")


def test_the_service_account_may_act_only_in_the_builder_namespace(release: dict[str, str]) -> None:
    account = f"system:serviceaccount:{release['namespace']}:{release['name']}-opendepot"

    def can(verb: str, resource: str, namespace: str) -> str:
        return kubectl("auth", "can-i", "--as", account, verb, resource, "-n", namespace).stdout.strip()

    assert can("create", "pods", release["builders"]) == "yes"
    assert can("delete", "persistentvolumeclaims", release["builders"]) == "yes"
    assert can("create", "networkpolicies.networking.k8s.io", release["builders"]) == "yes"
    assert can("create", "pods", release["namespace"]) == "no"
    assert can("get", "secrets", "default") == "no"
    assert can("list", "nodes", "") == "no"
