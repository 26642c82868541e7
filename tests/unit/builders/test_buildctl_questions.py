"""Both backends ask a builder's BuildKit through `buildctl`: the local one at the builder's socket, the
Kubernetes one at the pod over the project's mTLS link. A stand-in buildctl (a shell script beside the
stand-in buildkitd, where the local backend looks first; on PATH for the Kubernetes one) answers, hangs or is
missing."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from opendepot.builders.backend import BuilderSpec
from opendepot.builders.kubernetes import BUILDKIT_PORT, KubernetesBuildkitd, KubernetesSettings, PodState
from opendepot.builders.local import LocalBuildkitd
from opendepot.datadir import DataDir
from opendepot.ids import new_id
from opendepot.pki.authority import Authority
from opendepot.pki.links import builder_server_name
from opendepot.projects.policy import CacheSetting
from opendepot.sealed.vault import Vault

PROJECT = new_id()


def stand_in(bin_dir: Path, script: str | None) -> Path:
    bin_dir.mkdir(parents=True)
    if script is not None:
        buildctl = bin_dir / "buildctl"
        buildctl.write_text("#!/bin/sh\n" + script)
        buildctl.chmod(buildctl.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def backend(tmp_path: Path, script: str | None) -> LocalBuildkitd:
    bin_dir = stand_in(tmp_path / "bin", script)
    return LocalBuildkitd(str(bin_dir / "buildkitd"), DataDir(tmp_path / "data"))


def test_disk_usage_sums_what_buildctl_du_reports(tmp_path: Path) -> None:
    records = '[{"id": "a", "size": 1000}, {"id": "b", "size": 234}]'
    local = backend(tmp_path, f"echo \"$@\" > {tmp_path}/args\necho '{records}'\n")
    assert asyncio.run(local.disk_usage(PROJECT, "amd64")) == 1234
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["--addr", f"unix://{local.socket_path(PROJECT, 'amd64')}"]
    assert args[2:] == ["du", "--format", "{{json", ".}}"]


def test_a_failing_or_missing_buildctl_cannot_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert asyncio.run(backend(tmp_path / "a", "exit 1\n").disk_usage(PROJECT, "amd64")) is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nor on PATH
    missing = backend(tmp_path / "b", None)
    assert asyncio.run(missing.disk_usage(PROJECT, "amd64")) is None
    # A probe that cannot run cannot tell a wedged builder: it must not have one restarted on a guess.
    assert asyncio.run(missing.responsive(PROJECT, "amd64", 1.0)) is True


@pytest.mark.parametrize("script, answers", [("exit 0\n", True), ("exit 3\n", False)])
def test_responsive_is_whether_buildctl_answered(tmp_path: Path, script: str, answers: bool) -> None:
    assert asyncio.run(backend(tmp_path, script).responsive(PROJECT, "amd64", 5.0)) is answers


def test_a_buildctl_that_hangs_is_killed_and_counts_as_no_answer(tmp_path: Path) -> None:
    local = backend(tmp_path, f"echo $$ > {tmp_path}/pid\nexec sleep 30\n")
    assert asyncio.run(local.responsive(PROJECT, "amd64", 0.5)) is False
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_buildctl_that_writes_without_end_is_killed_and_cannot_say(tmp_path: Path) -> None:
    # What answers at a pod's port is the tenant's if a RUN step took its buildkitd over: the answer it
    # relays through buildctl is read up to a bound, never into the supervisor's memory without end.
    local = backend(tmp_path, f"echo $$ > {tmp_path}/pid\nexec yes '{{\"size\": 1}},'\n")
    started = time.monotonic()
    assert asyncio.run(local.disk_usage(PROJECT, "amd64")) is None
    assert time.monotonic() - started < 20  # the output bound ended it, not the 30 s time bound
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


# --- Kubernetes: the same questions to a pod, over mTLS ---

POD_IP = "10.88.0.7"
KEEP = 100 << 20  # the project's cache policy; the GC target is this (under four fifths of a 1 GiB volume)


def pod_backend(
    tmp_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch, script: str
) -> KubernetesBuildkitd:
    """A backend that knows of one running pod (as its watch would) and a GC target (as its start would)."""
    monkeypatch.setenv("PATH", f"{stand_in(tmp_path / 'bin', script)}:{os.environ['PATH']}")
    settings = KubernetesSettings(kubeconfig=None, namespace="builders", image="example/buildkitd:1")
    kubernetes = KubernetesBuildkitd(settings, Authority(tmp_path / "pki", vault))
    kubernetes._pods[(PROJECT, "amd64")] = PodState("Running", POD_IP, deleting=False)
    spec = BuilderSpec(PROJECT, "amd64", CacheSetting(KEEP, 7), "2x4")
    # No cluster: only the backend's bookkeeping of a start.
    monkeypatch.setattr(kubernetes, "_start", lambda _spec: None)
    monkeypatch.setattr(kubernetes, "_ensure_watch", lambda: None)
    asyncio.run(kubernetes.start(spec))
    return kubernetes


# du answers from a file the stand-in prune shrinks to what --keep-storage (MB, 10^6 bytes) allows.
CACHE = """echo "$@" >> {log}
case "$*" in
  *" du "*) echo "[{{\\"size\\": $(cat {size})}}]" ;;
  *" prune "*) keep=$(echo "$*" | sed 's/.*--keep-storage \\([0-9.]*\\).*/\\1/'); \
    awk -v k="$keep" 'BEGIN {{ printf "%d", k * 1000000 }}' > {size} ;;
esac
"""


def test_a_pods_buildctl_goes_over_the_projects_mtls_link(
    tmp_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "size").write_text("4321")
    script = CACHE.format(log=tmp_path / "log", size=tmp_path / "size")
    kubernetes = pod_backend(tmp_path, vault, monkeypatch, script)
    assert asyncio.run(kubernetes.disk_usage(PROJECT, "amd64")) == 4321
    args = (tmp_path / "log").read_text().split()
    flags = dict(zip(args[0:10:2], args[1:10:2], strict=True))
    assert flags["--addr"] == f"tcp://{POD_IP}:{BUILDKIT_PORT}"
    assert flags["--tlsservername"] == builder_server_name(PROJECT, "amd64")
    # The project's CA verifies the pod; the gateway's link certificate is what the pod admits.
    assert (
        Path(flags["--tlscacert"]).read_text() == (tmp_path / "pki").joinpath(PROJECT, "ca.pem").read_text()
    )
    assert Path(flags["--tlscert"]).name == "client.pem" and Path(flags["--tlskey"]).exists()
    assert args[10:] == ["du", "--format", "{{json", ".}}"]
    # No pod known: nothing to ask.
    assert asyncio.run(kubernetes.disk_usage(new_id(), "amd64")) is None


def test_a_pods_cache_over_its_gc_target_is_pruned_to_it_after_its_builds(
    tmp_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    size, log = tmp_path / "size", tmp_path / "log"
    kubernetes = pod_backend(tmp_path, vault, monkeypatch, CACHE.format(log=log, size=size))
    size.write_text(str(KEEP - 1))
    assert asyncio.run(kubernetes.relieve(PROJECT, "amd64")) is None  # under: a du, no prune
    assert [line.split()[10] for line in log.read_text().splitlines()] == ["du"]
    size.write_text(str(KEEP + (50 << 20)))
    freed = asyncio.run(kubernetes.relieve(PROJECT, "amd64"))
    assert [line.split()[10] for line in log.read_text().splitlines()] == ["du", "du", "prune", "du"]
    assert int(size.read_text()) <= KEEP  # pruned to the target
    assert freed == KEEP + (50 << 20) - int(size.read_text())
    # A builder it did not start (or stopped) has no target here: nothing is pruned.
    kubernetes._gc_targets.clear()
    assert asyncio.run(kubernetes.relieve(PROJECT, "amd64")) is None


def test_a_pod_whose_buildkit_hangs_is_not_responsive_and_its_buildctl_is_killed(
    tmp_path: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubernetes = pod_backend(tmp_path, vault, monkeypatch, f"echo $$ > {tmp_path}/pid\nexec sleep 30\n")
    assert asyncio.run(kubernetes.responsive(PROJECT, "amd64", 0.5)) is False
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)
