"""buildkitd.toml for one builder: unix socket only, OCI worker, the project's cache policy as GC policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    mirrors: Mapping[str, str] | None = None,
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
            *registry_tables(insecure_registries, mirrors or {}),
            "",
        ]
    )


def registry_tables(insecure: Sequence[str], mirrors: Mapping[str, str]) -> list[str]:
    """One `[registry."host"]` table per host (TOML allows no repeats): plain HTTP for our own registry
    and the pull-through caches; `mirrors` for each upstream (upstream host -> its cache's host:port)."""
    tables: dict[str, list[str]] = {}
    for host in dict.fromkeys((*insecure, *mirrors.values())):
        tables[host] = ["  http = true"]
    for upstream, mirror in mirrors.items():
        tables.setdefault(upstream, []).append(f'  mirrors = ["{mirror}"]')
    return [f'[registry."{host}"]\n' + "\n".join(lines) for host, lines in tables.items()]
