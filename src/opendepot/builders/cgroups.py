"""CPU and memory limits for builders, from the project's hardware size, through cgroups where the host
allows it. Each builder gets a child of the server's own cgroup, so limits nest inside whatever the host
gave the server.

- cgroup v1 (per-controller hierarchies): cpu.cfs_quota_us = cpus x cfs_period_us; memory.limit_in_bytes.
  The group has the same path in both hierarchies, and buildkitd is told to put its RUN containers under it
  (`defaultCgroupParent`), so the limits cover the build steps, not only buildkitd.
- cgroup v2: cpu.max and memory.max, when the server's cgroup can delegate those controllers.
- Otherwise nothing is enforced, and the log says so once per builder."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from opendepot.projects.hardware import Hardware

log = logging.getLogger("opendepot.machines")

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def hardware_size(size: str) -> tuple[int, int]:
    """ "16x32" -> (16 CPUs, 32 GB)."""
    hardware = Hardware.parse(size)
    return hardware.cpus, hardware.memory_gb


def _own_paths() -> dict[str, str]:
    """controller -> this process's cgroup path ("" key for the v2 unified hierarchy)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


class CgroupLimits:
    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.own = _own_paths()

    def group_path(self, name: str) -> str | None:
        """The builder's cgroup path, the same in the cpu and memory hierarchies (cgroup v1), or None."""
        if not all(c in self.own and (self.root / c).is_dir() for c in ("cpu", "memory")):
            return None
        base = max((self.own["cpu"], self.own["memory"]), key=len).rstrip("/")
        return f"{base}/opendepot/{name}"

    def _v1_group(self, controller: str, name: str) -> Path | None:
        path = self.group_path(name)
        return None if path is None else self.root / controller / path.lstrip("/")

    def apply(self, name: str, pid: int, cpus: int, memory_bytes: int) -> str:
        """Moves pid into a cgroup with these limits; returns what is enforced, for the log."""
        enforced = []
        try:
            cpu = self._v1_group("cpu", name)
            if cpu is not None:
                cpu.mkdir(parents=True, exist_ok=True)
                (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(cpus * PERIOD_US))
                (cpu / "cgroup.procs").write_text(str(pid))
                enforced.append(f"{cpus} CPUs")
            memory = self._v1_group("memory", name)
            if memory is not None:
                memory.mkdir(parents=True, exist_ok=True)
                (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
                (memory / "cgroup.procs").write_text(str(pid))
                enforced.append(f"{memory_bytes >> 20} MiB memory")
            if not enforced and "" in self.own and (self.root / "cgroup.controllers").exists():
                enforced = self._apply_v2(name, pid, cpus, memory_bytes)
        except OSError as exc:
            log.warning("builder %s: cgroup limits not enforced (%s)", name, exc)
            return "none"
        if not enforced:
            log.warning("builder %s: no writable cgroup hierarchy; CPU and memory limits not enforced", name)
            return "none"
        return ", ".join(enforced)

    def _apply_v2(self, name: str, pid: int, cpus: int, memory_bytes: int) -> list[str]:
        parent = self.root / self.own[""].lstrip("/") / "opendepot"
        parent.mkdir(parents=True, exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+cpu +memory")
        group = parent / name
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{cpus * PERIOD_US} {PERIOD_US}")
        (group / "memory.max").write_text(str(memory_bytes))
        (group / "cgroup.procs").write_text(str(pid))
        return [f"{cpus} CPUs", f"{memory_bytes >> 20} MiB memory"]

    def remove(self, name: str) -> None:
        for controller in ("cpu", "memory"):
            group = self._v1_group(controller, name)
            if group is not None:
                with contextlib.suppress(OSError):
                    group.rmdir()
        if "" in self.own:
            with contextlib.suppress(OSError):
                (self.root / self.own[""].lstrip("/") / "opendepot" / name).rmdir()
