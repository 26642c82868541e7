"""The local backend: one stock buildkitd process per (project, platform) on this host."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from opendepot.buildkit.config import buildkitd_toml
from opendepot.datadir import DataDir
from opendepot.processes import terminate

from .backend import BuilderSpec, RecordedBuilder, gc_keep_bytes
from .buildctl import answers, buildctl_beside, cache_bytes, prune_to
from .cgroups import CgroupLimits, hardware_size
from .sandbox import CNI_PLUGINS, Sandbox

logger = logging.getLogger("opendepot.machines")


LEFTOVER_GRACE_SECONDS = 5.0


def _volume_fill(mount_point: Path) -> tuple[int, bool] | None:
    """What the file system at mount_point holds, and whether it is nearly full (under a tenth free), or None
    if it is not there. A cache BuildKit keeps at its GC target (four fifths of the volume, plus the file
    system's overhead) stays clear of nearly full: no prune after each build."""
    try:
        stats = os.statvfs(mount_point)
    except OSError:
        return None
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_bavail < stats.f_blocks // 10


class LocalBuildkitd:
    """One stock buildkitd per (project, platform) on this host, listening only on a unix socket.
    Its --root is the project's cache directory, which outlives the process."""

    def __init__(
        self,
        buildkitd: str,
        paths: DataDir,
        insecure_registries: Sequence[str] = (),
        sandbox: Sandbox | None = None,
        mirrors: Mapping[str, str] | None = None,
        memory_cap_bytes: int | None = None,
    ) -> None:
        self.buildkitd = buildkitd
        self.buildctl = buildctl_beside(buildkitd)
        self.insecure_registries = tuple(insecure_registries)
        # upstream registry host -> its pull-through cache (host:port, plain HTTP)
        self.mirrors = dict(mirrors or {})
        self.paths = paths
        self._processes: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.limits = CgroupLimits()
        # None only with --unsafe-builders: buildkitd as host root on the host network.
        self.sandbox = sandbox
        # An operator's cap on every builder's memory, below what the hardware size gives.
        self.memory_cap_bytes = memory_cap_bytes
        # Sandboxed builders: what BuildKit's GC keeps of each one's volume (relieve prunes down to it).
        self._gc_targets: dict[tuple[str, str], int] = {}

    def socket_path(self, project_id: str, platform: str) -> Path:
        if self.sandbox is not None:
            return self.sandbox.socket_path(project_id, platform)
        return self.paths.builder_socket(project_id, platform)

    def state_dir(self, project_id: str, platform: str) -> Path:
        return self.paths.builder_state(project_id, platform)

    def _limits(self, spec: BuilderSpec) -> tuple[int, int]:
        """(CPUs, memory bytes) of the builder: its hardware size, memory capped by the operator."""
        cpus, memory_gb = hardware_size(spec.hardware)
        memory_bytes = memory_gb << 30
        if self.memory_cap_bytes is not None:
            memory_bytes = min(memory_bytes, self.memory_cap_bytes)
        return cpus, memory_bytes

    def memory_watch(self, project_id: str, platform: str) -> tuple[Callable[[], int], int | None] | None:
        """How to read the builder's OOM-kill count, and its memory limit; None where it cannot be read
        (unsafe builders put RUN steps in child groups whose kills a v1 parent does not count)."""
        sandbox = self.sandbox
        if sandbox is None:
            return None
        return (lambda: sandbox.oom_kills(project_id, platform)), sandbox.memory_limit(project_id, platform)

    def _config(self, spec: BuilderSpec) -> str:
        key = f"{spec.project_id}-{spec.platform}"
        if self.sandbox is not None:
            return buildkitd_toml(
                state_dir=self.sandbox.buildkit_root(spec.project_id, spec.platform),
                socket=self.socket_path(spec.project_id, spec.platform),
                keep_bytes=gc_keep_bytes(spec.cache.keep_bytes, self.sandbox.disk_max_bytes),
                keep_days=spec.cache.keep_days,
                # Rootless runc on cgroup v1 makes no per-step cgroups: the builder's own (joined before
                # exec) cover the steps.
                cgroup_parent=None,
                insecure_registries=self.insecure_registries,
                cni_bridge=CNI_PLUGINS,
                mirrors=self.mirrors,
            )
        return buildkitd_toml(
            state_dir=self.state_dir(spec.project_id, spec.platform),
            socket=self.socket_path(spec.project_id, spec.platform),
            keep_bytes=spec.cache.keep_bytes,
            keep_days=spec.cache.keep_days,
            # RUN containers go under the builder's own cgroup, so its limits cover them.
            cgroup_parent=self.limits.group_path(key),
            insecure_registries=self.insecure_registries,
            mirrors=self.mirrors,
        )

    async def start(self, spec: BuilderSpec) -> int:
        if self.sandbox is not None:
            return await self._start_sandboxed(spec, self.sandbox)
        key = (spec.project_id, spec.platform)
        self.paths.run.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.state_dir(*key).mkdir(parents=True, exist_ok=True)
        socket = self.socket_path(*key)
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        config = self.paths.builder_config(*key)
        config.write_text(self._config(spec))
        log = self.paths.builder_log(*key).open("ab")
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the child runs on its own
            [
                self.buildkitd,
                "--config",
                str(config),
                *(f"--allow-insecure-entitlement={e}" for e in spec.entitlements),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._processes[key] = process
        cpus, memory_bytes = self._limits(spec)
        enforced = self.limits.apply(f"{spec.project_id}-{spec.platform}", process.pid, cpus, memory_bytes)
        logger.info("builder %s/%s: hardware %s, limits enforced: %s", *key, spec.hardware, enforced)
        return process.pid

    async def _start_sandboxed(self, spec: BuilderSpec, sandbox: Sandbox) -> int:
        key = (spec.project_id, spec.platform)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.run.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The socket's usual place in the data dir names the real one (short, under /run/opendepot), so
        # `buildctl --addr unix://<data-dir>/run/<project>-<platform>.sock` works as with unsafe builders.
        for link, target in (
            (self.paths.builder_socket(*key), sandbox.socket_path(*key)),
            (self.paths.builder_config(*key), sandbox.config_path(*key)),
        ):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(target)
        cpus, memory_bytes = self._limits(spec)
        self._gc_targets[key] = gc_keep_bytes(spec.cache.keep_bytes, sandbox.disk_max_bytes)
        command, join_cgroups = await asyncio.to_thread(
            sandbox.prepare,
            *key,
            self.state_dir(*key),
            self._config(spec),
            cpus,
            memory_bytes,
            spec.entitlements,
            spec.cache.keep_bytes,
        )
        log = self.paths.builder_log(*key).open("ab")
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the child runs on its own
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=join_cgroups,  # noqa: PLW1509 - runs as root, before setpriv drops to the user
        )
        log.close()
        self._processes[key] = process
        logger.info(
            "builder %s/%s: sandboxed (rootless, own netns), %d CPUs, %d MiB memory, %d pids",
            *key, cpus, memory_bytes >> 20, sandbox.pids_max,
        )  # fmt: skip
        return process.pid

    async def ready(self, project_id: str, platform: str) -> bool:
        try:
            _reader, writer = await asyncio.open_unix_connection(str(self.socket_path(project_id, platform)))
        except OSError:
            return False
        writer.close()
        return True

    def alive(self, project_id: str, platform: str) -> bool:
        process = self._processes.get((project_id, platform))
        return process is not None and process.poll() is None

    async def stop(self, project_id: str, platform: str) -> None:
        process = self._processes.pop((project_id, platform), None)
        self._gc_targets.pop((project_id, platform), None)
        if process is not None:
            if process.poll() is not None:
                # Exited on its own (killed, crashed): what it started in its process group (RUN steps)
                # would outlive it. The group id cannot be reused while any member is left.
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGKILL)
            await terminate(process)
        if self.sandbox is not None:
            await asyncio.to_thread(self.sandbox.finish, project_id, platform)
            for link in (
                self.paths.builder_socket(project_id, platform),
                self.paths.builder_config(project_id, platform),
            ):
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
        else:
            self.limits.remove(f"{project_id}-{platform}")

    async def discard(self, project_id: str, platform: str) -> None:
        """Nothing: the state dir goes with the project's cache directory (builders/reset.py)."""

    async def disk_usage(self, project_id: str, platform: str) -> int | None:
        """The cache size as BuildKit itself reports it (`buildctl du`), or None if it cannot say."""
        return await cache_bytes(*self._buildctl(project_id, platform))

    def _buildctl(self, project_id: str, platform: str) -> tuple[str, list[str]]:
        """buildctl and the builder's address for it."""
        return self.buildctl, ["--addr", f"unix://{self.socket_path(project_id, platform)}"]

    async def relieve(self, project_id: str, platform: str) -> int | None:
        """A sandboxed builder's volume nearly full after a build (a RUN step that wrote until ENOSPC leaves
        its layer behind) is pruned down to BuildKit's GC target now (`buildctl prune --keep-storage`): the
        next build has room at once, not after BuildKit's own GC, which runs at most once a minute."""
        key = (project_id, platform)
        target = self._gc_targets.get(key)
        if self.sandbox is None or target is None:
            return None
        root = self.sandbox.buildkit_root(*key)
        before = await asyncio.to_thread(_volume_fill, root)
        if before is None or not before[1]:
            return None
        if not await prune_to(*self._buildctl(*key), target):
            return None
        after = await asyncio.to_thread(_volume_fill, root)
        return None if after is None else max(0, before[0] - after[0])

    async def responsive(self, project_id: str, platform: str, answer_within: float) -> bool:
        """Whether BuildKit answers ListWorkers within answer_within seconds."""
        return await answers(*self._buildctl(project_id, platform), within=answer_within)

    async def reap_leftovers(self, recorded: Sequence[RecordedBuilder]) -> None:
        await asyncio.to_thread(self._kill_leftovers, recorded)

    def _kill_leftovers(self, recorded: Sequence[RecordedBuilder]) -> None:
        signalled = []
        for builder in recorded:
            if builder.pid:
                # Only a buildkitd of ours: the pid may have been reused by anything since.
                cmdline = Path(f"/proc/{builder.pid}/cmdline")
                with contextlib.suppress(OSError):
                    if self.buildkitd.encode() in cmdline.read_bytes():
                        os.killpg(builder.pid, signal.SIGTERM)
                        signalled.append(builder.pid)
        # A new buildkitd on the same state dir cannot start while the old one holds its lock, and a
        # buildkitd with open client streams drains them before it exits: wait, then insist.
        deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
        while signalled and time.monotonic() < deadline:
            signalled = [pid for pid in signalled if Path(f"/proc/{pid}").exists()]
            time.sleep(0.1)
        for pid in signalled:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(p, pl) for p, pl in list(self._processes)))

    async def connect(
        self, project_id: str, platform: str, protocol: Callable[[], asyncio.BaseProtocol]
    ) -> asyncio.Transport:
        path = str(self.socket_path(project_id, platform))
        transport, _ = await asyncio.get_running_loop().create_unix_connection(protocol, path)
        return transport

    async def connect_socket(self, project_id: str, platform: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, str(self.socket_path(project_id, platform)))
        except BaseException:
            sock.close()
            raise
        return sock
