"""Builders as pods on a real one-node Kubernetes (`./dev k8s up`; `./dev test` starts it): `depot build`
through `opendepot serve --builders kubernetes`, the gateway dialing buildkitd's own mTLS listener in the pod.

Skips only when the cluster is not there: OPENDEPOT_TEST_KUBERNETES_SKIP says why `./dev test` could not start
it, and without OPENDEPOT_TEST_KUBECONFIG nobody started one."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opendepot.builders.kubernetes import preferred_slot, userns_base
from tests.e2e.test_builds import build, builds_of, new_project, step_states
from tests.e2e.test_opendepot_cli import opendepot
from tests.e2e.test_sandbox import HostListener, connect_banner, probe_context, probes
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import depot
from tests.support.cluster import HOST_ON_POD_BRIDGE, KUBECONFIG, needs_cluster
from tests.support.server import Server

IDLE_SECONDS = 3
OVER_TARGET_MIB = 1300  # written by a step of a project whose cache policy is 1 GB
GATEWAY_CIDR = f"{HOST_ON_POD_BRIDGE}/32"  # the gateway runs on the host

pytestmark = [
    pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible())),
    needs_cluster,
]


@pytest.fixture(scope="module")
def core() -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=KUBECONFIG))


@pytest.fixture(scope="module")
def namespace(core: Any) -> Iterator[str]:
    name = f"opendepot-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def kubernetes_server(data_dir: Path, namespace: str, idle_seconds: float) -> Server:
    return Server(
        data_dir=data_dir,
        database_url=None,
        extra_args=[
            "--builders",
            "kubernetes",
            "--kubeconfig",
            KUBECONFIG,
            "--namespace",
            namespace,
            "--storage-class",
            "opendepot-hostpath",
            "--gateway-cidrs",
            GATEWAY_CIDR,
            "--builder-idle-timeout",
            str(idle_seconds),
        ],
    ).start(timeout=120)  # the first Kubernetes client import and calls are slow on a busy machine


@pytest.fixture(scope="module")
def k8s_server(tmp_path_factory: pytest.TempPathFactory, namespace: str) -> Iterator[Server]:
    server = kubernetes_server(tmp_path_factory.mktemp("server-k8s") / "data", namespace, IDLE_SECONDS)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token(k8s_server: Server) -> str:
    return k8s_server.new_organization()[1]


def pods_of(core: Any, namespace: str, project: str) -> list[Any]:
    selector = f"opendepot.dev/project={project}"
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]


def claims_of(core: Any, namespace: str, project: str) -> list[Any]:
    selector = f"opendepot.dev/project={project}"
    return list(core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items)


def slot_claims_of(core: Any, namespace: str, project: str) -> list[Any]:
    selector = f"opendepot.dev/project={project},opendepot.dev/userns-slot"
    return list(core.list_namespaced_config_map(namespace, label_selector=selector).items)


def wait_for(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_build_in_a_pod_and_its_cache_survives_scale_to_zero(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    project = new_project(k8s_server, token, "pods")
    context = busybox_context(
        tmp_path / "ctx", "echo built-by-run > /where", "cat /where; cat /proc/self/uid_map > /uid_map"
    )

    code, first = build(k8s_server, token, project, context, "--output", f"type=local,dest={tmp_path / 'o1'}")
    assert code == 0, first
    assert set(step_states(first).values()) == {"DONE"}, step_states(first)
    pod_name = f"buildkitd-{project}-amd64"
    assert (tmp_path / "o1" / "where").read_text() == "built-by-run\n"
    # The step ran as root of the builder's own user namespace: unprivileged ids on the host, of the slot
    # its volume records and its claim holds.
    [claim] = claims_of(core, namespace, project)
    slot = int(claim.metadata.annotations["opendepot.dev/userns-slot"])
    assert (tmp_path / "o1" / "uid_map").read_text().split() == ["0", str(userns_base(slot)), "65536"]
    assert [c.metadata.name for c in slot_claims_of(core, namespace, project)] == [f"userns-slot-{slot}"]
    [pod] = pods_of(core, namespace, project)
    assert pod.metadata.name == pod_name
    assert pod.metadata.labels["app.kubernetes.io/managed-by"] == "opendepot"
    assert pod.metadata.labels["opendepot.dev/platform"] == "amd64"
    assert not pod.spec.containers[0].security_context.privileged
    limits = pod.spec.containers[0].resources.limits
    assert limits == {"cpu": "16", "memory": "32Gi"} or limits == {"cpu": "16000m", "memory": "32768Mi"}
    assert claim.status.phase == "Bound"
    assert claim.spec.storage_class_name == "opendepot-hostpath"
    # The build ran in the pod's buildkitd: its state is on the pod's volume (a hostPath PV on this node).
    volume = Path(core.read_persistent_volume(claim.spec.volume_name).spec.host_path.path)
    assert (volume / "buildkitd.lock").exists() and (volume / "runc-overlayfs").is_dir()

    # Idle: zero pods, the volume stays.
    wait_for("the idle builder pod to go", lambda: not pods_of(core, namespace, project), timeout=60)
    assert [c.metadata.uid for c in claims_of(core, namespace, project)] == [claim.metadata.uid]

    code, again = build(k8s_server, token, project, context, "--output", f"type=local,dest={tmp_path / 'o2'}")
    assert code == 0, again
    states = step_states(again)
    assert len(states) == 2 and set(states.values()) == {"CACHED"}, states
    assert (tmp_path / "o2" / "where").read_text() == "built-by-run\n"
    assert [b["status"] for b in builds_of(k8s_server, token, project)] == ["finished", "finished"]


def test_two_projects_get_two_pods_and_two_volumes_and_share_no_cache(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    first, second = new_project(k8s_server, token, "one"), new_project(k8s_server, token, "two")
    context = busybox_context(tmp_path / "ctx", "echo same-step > /f", "sleep 3")
    seen: dict[str, set[str]] = {first: set(), second: set()}
    results: dict[str, tuple[int, str]] = {}

    def run(project: str) -> None:
        results[project] = build(k8s_server, token, project, context)

    threads = [threading.Thread(target=run, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for project in seen:
            seen[project] |= {p.metadata.name for p in pods_of(core, namespace, project)}
        time.sleep(0.3)
    for project in (first, second):
        code, output = results[project]
        assert code == 0, output
        # The same steps, but neither project reuses the other's cache.
        assert set(step_states(output).values()) == {"DONE"}, step_states(output)
        assert seen[project] == {f"buildkitd-{project}-amd64"}
        assert len(claims_of(core, namespace, project)) == 1
    volumes = {claims_of(core, namespace, p)[0].spec.volume_name for p in (first, second)}
    assert len(volumes) == 2


def test_a_builder_whose_preferred_slot_is_held_gets_ids_of_its_own(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    """Builders' user namespaces are unique in the namespace: another builder (a stand-in claim, as another
    opendepot server would make) holds this project's preferred slot, so its RUN steps run on other host ids
    (sharing them would share RLIMIT_NPROC's count: one tenant's fork bomb would stop the other's steps)."""
    project = new_project(k8s_server, token, "slots")
    held = preferred_slot(project, "amd64")
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": f"userns-slot-{held}",
                "labels": {
                    "app.kubernetes.io/managed-by": "opendepot",
                    "opendepot.dev/project": "stand-in",
                    "opendepot.dev/platform": "amd64",
                    "opendepot.dev/userns-slot": str(held),
                },
            }
        },
    )
    try:
        context = busybox_context(tmp_path / "ctx", "cat /proc/self/uid_map > /uid_map")
        code, output = build(
            k8s_server, token, project, context, "--output", f"type=local,dest={tmp_path / 'o'}"
        )
        assert code == 0, output
        [claim] = slot_claims_of(core, namespace, project)
        slot = int(claim.metadata.labels["opendepot.dev/userns-slot"])
        assert slot != held
        uid_map = (tmp_path / "o" / "uid_map").read_text().split()
        assert uid_map == ["0", str(userns_base(slot)), "65536"]
        assert int(uid_map[1]) >= userns_base(held) + 65536 or int(uid_map[1]) + 65536 <= userns_base(held)
    finally:
        core.delete_namespaced_config_map(f"userns-slot-{held}", namespace)


def test_a_run_step_in_a_pod_reaches_nothing_of_the_host_nor_another_project_s_pod(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    """The sandbox probes of the builder-sandbox tests (test_sandbox.py, network), from a RUN step in a pod:
    a listener on every address of the host, the server's ports and PostgreSQL's on the host's pod-bridge
    address, another project's pod (its buildkitd and a RUN step listening in it) are all out of reach. A
    listener of the step's own proves the probe can succeed. (That the step can reach the registry needs the
    test cluster started with the registry's port allowed: OPENDEPOT_K8S_ALLOW_HOST_PORTS, scripts/k8s.)"""
    prober, target = new_project(k8s_server, token, "prober"), new_project(k8s_server, token, "target")
    other_port = 7777
    listening = probe_context(
        tmp_path / "listener",
        f"nc -ll -p {other_port} -e echo OTHER-BUILDER </dev/null >/dev/null 2>&1 &\nsleep 45; kill $!\n",
    )
    other_build = threading.Thread(target=build, args=(k8s_server, token, target, listening), daemon=True)
    other_build.start()
    host_side = HostListener()
    try:
        wait_for(
            "the other project's pod", lambda: any(p.status.pod_ip for p in pods_of(core, namespace, target))
        )
        [other_pod] = pods_of(core, namespace, target)
        other_ip = other_pod.status.pod_ip
        # Its RUN step listens (the host, outside the pods' firewall, gets the banner): a live target.
        deadline = time.monotonic() + 60
        while connect_banner(other_ip, other_port) != "OTHER-BUILDER":
            assert time.monotonic() < deadline, "the other project's RUN step never listened"
            time.sleep(0.5)
        host = GATEWAY_CIDR.partition("/")[0]
        targets = [
            (host, host_side.port, "host-listener"),
            (host, k8s_server.port, "api"),
            (host, k8s_server.buildkit_port, "gateway"),
            (host, k8s_server.registry_port, "registry"),
            (host, 5432, "postgres"),
            (other_ip, other_port, "other-run-step"),
            (other_ip, 1234, "other-buildkitd"),
        ]
        # Without a PID namespace in the pod (--oci-worker-no-process-sandbox), a step ends only when every
        # process it started has: the listeners are killed at the end.
        script = "grep 'Max processes' /proc/self/limits\n"  # userns-exec's RLIMIT_NPROC (--builder-pids-max)
        script += "nc -ll -p 7000 -e echo SELF </dev/null >/dev/null 2>&1 &\nown=$!\nsleep 1\n"
        script += "probe 127.0.0.1 7000 own-listener\n"
        script += "\n".join(f"probe {address} {port} {label}" for address, port, label in targets)
        script += "\nkill $own\n"
        code, output = build(
            k8s_server, token, prober, probe_context(tmp_path / "probe", script), "--no-cache"
        )
        assert code == 0, output
        # A fork bomb in a step is held to the builder's own process budget, not the node's.
        assert re.search(r"Max processes\s+1024\s+1024", output), output
        seen = probes(output)
        for key, value in sorted(seen.items()):
            print(f"[pod] PROBE {key} {value}")
        assert seen["own-listener 127.0.0.1:7000"].startswith("REACHED"), output
        reached = {
            k: v for k, v in seen.items() if not k.startswith("own-listener") and v.startswith("REACHED")
        }
        assert len(seen) == len(targets) + 1, output
        assert not reached, reached
        assert host_side.accepted == 0
    finally:
        host_side.close()
        other_build.join(timeout=90)


def test_a_build_whose_pod_is_killed_fails_and_the_next_build_works(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    project = new_project(k8s_server, token, "killed")
    slow = busybox_context(tmp_path / "slow", "echo started", "sleep 60")
    pod_name = f"buildkitd-{project}-amd64"
    result: dict[str, tuple[int, str]] = {}
    runner = threading.Thread(
        target=lambda: result.setdefault("slow", build(k8s_server, token, project, slow))
    )
    runner.start()

    def running_in_pod() -> bool:
        pods = pods_of(core, namespace, project)
        running = bool(pods) and pods[0].status.phase == "Running"
        return running and builds_of(k8s_server, token, project)[0]["status"] == "running"

    wait_for("the slow build to run in its pod", running_in_pod, timeout=120)
    time.sleep(4)  # into the sleep step
    core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)
    runner.join(timeout=180)
    assert not runner.is_alive()
    code, output = result["slow"]
    assert code != 0, output
    wait_for(
        "the build to be recorded as failed",
        lambda: builds_of(k8s_server, token, project)[0]["status"] == "failed",
        timeout=60,
    )

    quick = busybox_context(tmp_path / "quick", "echo after-the-kill > /f", "cat /f")
    code, output = build(k8s_server, token, project, quick)
    assert code == 0, output
    assert "after-the-kill" in output
    statuses = sorted(b["status"] for b in builds_of(k8s_server, token, project))
    assert statuses == ["failed", "finished"]


def held_bytes(directory: Path) -> int:
    """What the files under directory take on the host's disk (a hostPath volume)."""
    return sum(
        (Path(root) / name).lstat().st_blocks * 512
        for root, _dirs, files in os.walk(directory)
        for name in files
    )


def test_a_build_that_takes_its_cache_over_the_gc_target_is_pruned_back_at_once(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    # A 1 GB cache policy: BuildKit's GC target is 1 GiB, in a 2 GiB volume.
    created = opendepot(k8s_server, token, "projects", "create", "over-target", "--cache-gb", "1", "--json")
    assert created.returncode == 0, created.stderr
    project = json.loads(created.stdout)["projectId"]
    write = f"dd if=/dev/zero of=/big bs=1048576 count={OVER_TARGET_MIB} && echo WROTE"
    code, output = build(k8s_server, token, project, busybox_context(tmp_path / "big", write))
    assert code == 0 and "WROTE" in output, output
    # Once its builds are over, the server has the pod's BuildKit prune to the target (BuildKit's own GC runs
    # at most once a minute): the layer of 1300 MiB goes from the volume now.
    pruned = re.compile(rf"builder {project}/amd64: pruned (\d+) MiB of its cache after a build")
    wait_for(
        "the prune after the build", lambda: pruned.search(k8s_server.log_text()) is not None, timeout=30
    )
    match = pruned.search(k8s_server.log_text())
    assert match is not None and int(match.group(1)) >= OVER_TARGET_MIB - 1024, match
    [claim] = claims_of(core, namespace, project)
    volume = Path(core.read_persistent_volume(claim.spec.volume_name).spec.host_path.path)
    held = held_bytes(volume)
    print(f"pruned {match.group(1)} MiB; the volume holds {held >> 20} MiB on the host")
    assert held < 1 << 30


def host_pids_of_pod(pod_uid: str, command: str) -> list[int]:
    """Host pids of the pod's processes named command (the pod's containers run on this node)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != command:
                continue
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if pod_uid in cgroups or pod_uid.replace("-", "_") in cgroups:
            found.append(int(entry.name))
    return found


def test_a_wedged_buildkitd_in_a_pod_is_stopped_and_the_next_build_works(core: Any, tmp_path: Path) -> None:
    # A server of its own, whose builders stay up for as long as the test (only the wedge may stop one), in
    # a namespace of its own (a server at start removes builder pods in its namespace that it does not know).
    namespace = f"opendepot-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": namespace}})
    server = kubernetes_server(tmp_path / "data", namespace, idle_seconds=600)
    try:
        token = server.new_organization()[1]
        project = new_project(server, token, "wedged")
        code, output = build(server, token, project, busybox_context(tmp_path / "first", "echo one"))
        assert code == 0, output
        [pod] = pods_of(core, namespace, project)
        [buildkitd] = host_pids_of_pod(pod.metadata.uid, "buildkitd")
        # Stopped, buildkitd still accepts on its port (the kernel does): the pod's TCP readiness check
        # passes, and only ListWorkers, unanswered twice in a row, tells.
        os.kill(buildkitd, signal.SIGSTOP)
        try:
            wedged = f"builder {project}/amd64 wedged: BuildKit does not answer"
            wait_for("the wedge to be seen", lambda: wedged in server.log_text(), timeout=90)
            wait_for("the wedged pod to go", lambda: not host_pids_of_pod(pod.metadata.uid, "buildkitd"), 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(buildkitd, signal.SIGCONT)
        print("\n" + next(line for line in server.log_text().splitlines() if wedged in line))
        code, output = build(
            server, token, project, busybox_context(tmp_path / "again", "echo two > /f", "cat /f")
        )
        assert code == 0 and "two" in output, output
        [again] = pods_of(core, namespace, project)
        assert again.metadata.uid != pod.metadata.uid
    finally:
        server.stop()
        core.delete_namespace(namespace)


def test_reset_project_deletes_the_volume_and_empties_the_cache(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    project = new_project(k8s_server, token, "reset")
    context = busybox_context(tmp_path / "ctx", "echo cached-until-reset > /f")
    code, output = build(k8s_server, token, project, context)
    assert code == 0, output
    [claim] = claims_of(core, namespace, project)

    reset = depot(k8s_server.url, token, "cache", "reset", "--project", project)
    assert reset.returncode == 0, reset.stderr
    assert claims_of(core, namespace, project) == []
    assert pods_of(core, namespace, project) == []

    code, output = build(k8s_server, token, project, context)
    assert code == 0, output
    assert set(step_states(output).values()) == {"DONE"}, step_states(output)
    [new_claim] = claims_of(core, namespace, project)
    assert new_claim.metadata.uid != claim.metadata.uid


def test_deleted_project_leaves_nothing_in_the_namespace(
    k8s_server: Server, token: str, core: Any, namespace: str, tmp_path: Path
) -> None:
    project = new_project(k8s_server, token, "deleted")
    code, output = build(k8s_server, token, project, busybox_context(tmp_path / "ctx", "echo x"))
    assert code == 0, output
    deleted = depot(k8s_server.url, token, "projects", "delete", "--project-id", project, "--yes")
    assert deleted.returncode == 0, deleted.stderr + deleted.stdout
    selector = f"opendepot.dev/project={project}"
    assert claims_of(core, namespace, project) == []
    assert slot_claims_of(core, namespace, project) == []
    assert core.list_namespaced_secret(namespace, label_selector=selector).items == []
