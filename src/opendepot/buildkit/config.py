"""buildkitd.toml for one builder: unix socket only, OCI worker, the project's cache policy as GC policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def buildkitd_toml(
    *,
    state_dir: Path,
    socket: Path,
    keep_bytes: int,
    keep_days: int,
    cgroup_parent: str | None,
    insecure_registries: Sequence[str],
    cni_bridge: Path | None = None,
) -> str:
    """cni_bridge (the CNI plugins' dir) puts each RUN step in its own netns on a CNI bridge: with rootless
    BuildKit under RootlessKit --detach-netns, that bridge lives in RootlessKit's detached netns; the
    default, "host", would be the host's netns, where buildkitd itself stays."""
    oci = [
        "[worker.oci]",
        "  enabled = true",
        "  gc = true",
        f"  gckeepstorage = {keep_bytes}",
    ]
    if cni_bridge is not None:
        oci += ['  networkMode = "bridge"', f'  cniBinaryPath = "{cni_bridge}"']
    if cgroup_parent:
        oci.append(f'  defaultCgroupParent = "{cgroup_parent}"')
    oci += ["  [[worker.oci.gcpolicy]]", f"    keepBytes = {keep_bytes}"]
    if keep_days:
        oci.append(f'    keepDuration = "{keep_days * 24}h"')
    return "\n".join(
        [
            f'root = "{state_dir}"',
            "[grpc]",
            f'  address = ["unix://{socket}"]',
            *oci,
            "[worker.containerd]",
            "  enabled = false",
            *(f'[registry."{host}"]\n  http = true' for host in insecure_registries),
            "",
        ]
    )
