"""Builders as sandboxes (issue 13): a RUN step reaches nothing of the host and no other tenant.

Each builder is rootless BuildKit run as its own unprivileged host user:

    supervisor (root) ─ preexec: join the builder's cgroups (pids, cpu, memory)
      └ setpriv --reuid=<builder uid> --pdeathsig=TERM          (dies with the supervisor)
          rootlesskit --net=slirp4netns --detach-netns --disable-host-loopback
            └ buildkitd (networkMode = "bridge")

- uid 0 in a RUN step is the builder user on the host; uids 1..65535 are its own /etc/subuid block.
- buildkitd stays in the host network namespace (--detach-netns), so it pushes to the project registry at the
  very address the clients use. RUN steps get their own netns on BuildKit's CNI bridge inside RootlessKit's
  detached netns, whose only way out is slirp4netns, which runs as the builder user too.
- One nftables table per server instance (`inet odb_<instance>`) rejects, for the sockets of this instance's
  builder users, every destination that is an address of this host (loopback, every interface address,
  present or future) and link-local, except the registry's own listen address. It covers buildkitd's own
  fetches (ADD <url>, FROM, git) and everything a RUN step sends (through slirp4netns, same uid).
- The pids limit (and CPU/memory) are on cgroups that the launcher joins before exec, so nothing the builder
  forks escapes them; at start, what an earlier, killed supervisor of this data dir left in them is killed.

Host-global names are derived from the data dir, so several servers on one host never share anything:
users `odb-<instance>-<key>`, table `odb_<instance>`, cgroups `opendepot-<instance>/<key>`."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from opendepot.builders.backend import DEFAULT_DISK_MAX_BYTES, cache_volume_bytes
from opendepot.projects.policy import DEFAULT_CACHE

log = logging.getLogger("opendepot.builders.sandbox")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_PLUGINS = Path("/usr/lib/cni")
SUBID_BLOCK = 65536
SUBID_FIRST = 1_000_000
# Serialises user and subordinate-id allocation between the servers of this host.
SUBID_LOCK = Path("/run/lock/opendepot-builder-users.lock")
# Builders' sockets and runtime state: unix socket paths must stay under 108 bytes, which a data dir cannot
# promise. One directory per server instance, removed when it stops.
RUNTIME_ROOT = Path("/run/opendepot")
VOLUME_IMAGE = "volume.ext4"  # a builder's cache volume, in its cache dir (_volume_image)
PERIOD_US = 100_000
USER_PREFIX = "odb-"


# Run inside a network.host builder's netns: 127.0.0.1:<registry port> -> slirp4netns's host alias.
REGISTRY_FORWARDER = """
import asyncio, sys
PORT = int(sys.argv[1])
async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
async def handle(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("10.0.2.2", PORT)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    await server.serve_forever()
asyncio.run(main())
"""


class SandboxUnavailable(RuntimeError):
    """The host cannot run sandboxed builders; the message says why."""


@dataclass(frozen=True, slots=True)
class BuilderUser:
    name: str
    uid: int
    gid: int


def instance_id(data_dir: Path) -> str:
    """Six hex digits naming this server instance in every host-global thing it creates."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]


def _which(name: str, beside: Path | None = None) -> str | None:
    if beside is not None and (beside / name).exists():
        return str(beside / name)
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _own_cgroups() -> dict[str, str]:
    """controller -> this process's cgroup path ("" for the cgroup v2 hierarchy)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


class BuilderCgroups:
    """The builder's cgroups, joined by the launcher before exec. cgroup v1: one group per controller
    (pids, cpu, memory), all at `<own path>/opendepot-<instance>/<key>`; cgroup v2: one group there."""

    def __init__(self, instance: str, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.own = _own_cgroups()
        self.v1 = (root / "pids" / "cgroup.procs").exists() or (root / "pids").is_dir()
        self.instance = instance

    def _parent(self, controller: str) -> Path:
        own = self.own.get(controller if self.v1 else "", "/").lstrip("/")
        base = self.root / controller if self.v1 else self.root
        return base / own / f"opendepot-{self.instance}"

    def controllers(self) -> tuple[str, ...]:
        if self.v1:
            return tuple(c for c in ("pids", "cpu", "memory") if (self.root / c).is_dir())
        return ("",)

    def groups(self, key: str) -> list[Path]:
        return [self._parent(c) / key for c in self.controllers()]

    def pids_group(self, key: str) -> Path:
        return self._parent("pids" if self.v1 else "") / key

    def available(self) -> bool:
        if self.v1:
            return (self.root / "pids").is_dir()
        try:
            return "pids" in (self.root / "cgroup.controllers").read_text().split()
        except OSError:
            return False

    def create(self, key: str, pids_max: int, cpus: int, memory_bytes: int) -> list[Path]:
        """Creates the builder's groups with their limits; returns the cgroup.procs files to join."""
        if not self.v1:
            parent = self._parent("")
            parent.mkdir(parents=True, exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+pids +cpu +memory")
            group = parent / key
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(str(pids_max))
            (group / "cpu.max").write_text(f"{cpus * PERIOD_US} {PERIOD_US}")
            (group / "memory.max").write_text(str(memory_bytes))
            return [group / "cgroup.procs"]
        procs = []
        for controller in self.controllers():
            group = self._parent(controller) / key
            group.mkdir(parents=True, exist_ok=True)
            if controller == "pids":
                (group / "pids.max").write_text(str(pids_max))
            elif controller == "cpu":
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(cpus * PERIOD_US))
            elif controller == "memory":
                (group / "memory.limit_in_bytes").write_text(str(memory_bytes))
                # Swap would turn an out-of-memory step into a crawl; the step should fail instead.
                with contextlib.suppress(OSError):
                    (group / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            procs.append(group / "cgroup.procs")
        return procs

    def pids(self, key: str) -> list[int]:
        try:
            return [int(p) for p in (self.pids_group(key) / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def builder_keys(self) -> list[str]:
        parent = self._parent("pids" if self.v1 else "")
        with contextlib.suppress(OSError):
            return sorted(p.name for p in parent.iterdir() if p.is_dir())
        return []

    def memory_group(self, key: str) -> Path:
        return self._parent("memory" if self.v1 else "") / key

    def oom_kills(self, key: str) -> int:
        """How many processes the kernel killed for memory in this builder's group (v1 counts only the
        group's own, which holds the RUN steps too: rootless runc makes no per-step groups)."""
        return oom_kills(self.memory_group(key))

    def memory_limit(self, key: str) -> int | None:
        return memory_limit(self.memory_group(key))

    def kill(self, key: str) -> int:
        """SIGKILLs every process in the builder's group, by pid; returns how many there were."""
        killed: set[int] = set()
        for _ in range(20):
            left = self.pids(key)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        return len(killed)

    def remove(self, key: str) -> None:
        for group in self.groups(key):
            with contextlib.suppress(OSError):
                group.rmdir()

    def remove_parent(self) -> None:
        for controller in self.controllers():
            with contextlib.suppress(OSError):
                self._parent(controller).rmdir()


def oom_kills(group: Path) -> int:
    """The kernel's count of OOM kills in a memory cgroup: v1 `memory.oom_control`, v2 `memory.events`."""
    for name in ("memory.oom_control", "memory.events"):
        with contextlib.suppress(OSError, ValueError):
            for line in (group / name).read_text().splitlines():
                label, _, value = line.partition(" ")
                if label == "oom_kill":
                    return int(value)
    return 0


def memory_limit(group: Path) -> int | None:
    """A memory cgroup's limit in bytes (v1 `memory.limit_in_bytes`, v2 `memory.max`), None if unlimited."""
    for name in ("memory.limit_in_bytes", "memory.max"):
        with contextlib.suppress(OSError, ValueError):
            text = (group / name).read_text().strip()
            # v1 writes "no limit" as a huge page-aligned number, v2 as "max".
            return None if text == "max" or int(text) >= 1 << 62 else int(text)
    return None


def join_cgroups(procs: Sequence[Path]) -> Callable[[], None]:
    """A preexec_fn: the child (still root) writes its own pid into the builder's groups, so the launcher
    and everything it forks is limited from the first instruction."""

    def join() -> None:
        pid = str(os.getpid()).encode()
        for path in procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    return join


@contextlib.contextmanager
def _subid_lock() -> Iterator[None]:
    SUBID_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with SUBID_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _subid_owners(path: Path) -> dict[str, tuple[int, int]]:
    owners: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split(":")
            if len(parts) == 3 and all(p.isascii() and p.isdigit() for p in parts[1:]):
                owners[parts[0]] = (int(parts[1]), int(parts[2]))
    return owners


def _next_subid_block() -> int:
    end = SUBID_FIRST
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        for start, count in _subid_owners(path).values():
            end = max(end, start + count)
    return -(-end // SUBID_BLOCK) * SUBID_BLOCK


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SandboxUnavailable(f"{' '.join(command)} failed: {result.stderr.strip() or result.returncode}")


def _make_volume(image: Path, size: int) -> None:
    """An empty ext4 file system of `size` bytes at image (replacing what is there), only root's to open.
    No reserved blocks (the builder is its only user); inode tables and journal are zeroed lazily, so a new
    volume costs milliseconds and a few MB of the host's disk, however large."""
    made = image.with_name(image.name + ".new")
    made.unlink(missing_ok=True)
    with made.open("wb") as file:
        file.truncate(size)
    os.chmod(made, 0o600)
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(made))
    made.rename(image)


class Sandbox:
    """Everything host-global that sandboxed builders of one server instance need, and its removal."""

    def __init__(
        self,
        data_dir: Path,
        buildkitd: str,
        registry_endpoints: Sequence[tuple[str, int]] = (),
        pids_max: int = 1024,
        rootlesskit: str | None = None,
        disk_max_bytes: int = DEFAULT_DISK_MAX_BYTES,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.instance = instance_id(self.data_dir)
        self.buildkitd = buildkitd
        beside = Path(buildkitd).parent if os.sep in buildkitd else None
        self.rootlesskit = rootlesskit or _which("rootlesskit", beside) or "rootlesskit"
        self.registry_endpoints = tuple(registry_endpoints)
        self.pids_max = pids_max
        self.disk_max_bytes = disk_max_bytes
        self.table = f"odb_{self.instance}"
        self.cgroups = BuilderCgroups(self.instance)
        self.runtime_root = RUNTIME_ROOT / self.instance

    # ---- what the host must offer -------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why this host cannot run sandboxed builders (empty when it can)."""
        found: list[str] = []
        if os.geteuid() != 0:
            found.append("the supervisor must run as root to create builder users, cgroups and nft rules")
        for ns in ("user", "net", "mnt", "pid"):
            if not Path(f"/proc/self/ns/{ns}").exists():
                found.append(f"the kernel has no {ns} namespaces")
        with contextlib.suppress(OSError, ValueError):
            if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
                found.append("user namespaces are disabled (sysctl user.max_user_namespaces = 0)")
        with contextlib.suppress(OSError):
            if Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() == "0":
                found.append(
                    "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
                )
        with contextlib.suppress(OSError):
            if Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").read_text().strip() == "1":
                found.append("AppArmor restricts unprivileged user namespaces")
        beside = Path(self.buildkitd).parent if os.sep in self.buildkitd else None
        for binary, package in (
            ("newuidmap", "uidmap"),
            ("newgidmap", "uidmap"),
            ("slirp4netns", "slirp4netns"),
            ("nft", "nftables"),
            ("setpriv", "util-linux"),
            ("runc", "runc"),
            ("useradd", "passwd"),
            ("mkfs.ext4", "e2fsprogs"),
            ("resize2fs", "e2fsprogs"),
            ("losetup", "mount"),
        ):
            if _which(binary, beside) is None:
                found.append(f"{binary} is missing (Debian package {package})")
        if not Path(self.rootlesskit).exists() and shutil.which(self.rootlesskit) is None:
            found.append("rootlesskit >= 2 is missing (./dev setup builds it into .venv/bin)")
        if not (CNI_PLUGINS / "bridge").exists():
            found.append(f"the CNI bridge plugin is missing in {CNI_PLUGINS} (containernetworking-plugins)")
        if not self.cgroups.available():
            found.append("no pids cgroup controller to cap a builder's processes")
        if not Path("/dev/loop-control").exists():
            found.append("no loop devices (/dev/loop-control) for the builders' own cache volumes")
        return found

    def check(self) -> None:
        if problems := self.problems():
            raise SandboxUnavailable("; ".join(problems))

    # ---- per server instance ------------------------------------------------------------------------

    def open(self) -> None:
        """At supervisor start: kills what a killed supervisor of this data dir left in its cgroups,
        then (re)creates this instance's nft table and runtime dir."""
        for key in self.cgroups.builder_keys():
            if killed := self.cgroups.kill(key):
                log.warning("builder %s: killed %d process(es) left by an earlier supervisor", key, killed)
            self.cgroups.remove(key)
        self._install_nft_table()
        self._remove_runtime(self.runtime_root)
        self.runtime_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_root, 0o711)  # noqa: S103 - search only, for builder users
        self._make_traversable(self.runtime_root)

    def close(self) -> None:
        """At supervisor stop (builders already stopped): removes the nft table and the cgroups."""
        for key in self.cgroups.builder_keys():
            self.cgroups.kill(key)
            self.cgroups.remove(key)
        self.cgroups.remove_parent()
        self._remove_runtime(self.runtime_root)
        with contextlib.suppress(OSError):
            RUNTIME_ROOT.rmdir()
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, check=False)

    def _nft_ruleset(self) -> str:
        allowed = []
        for host, port in self.registry_endpoints:
            family = "ip6" if ":" in host else "ip"
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a registry listening everywhere
                # A registry on every address: the builders may reach its port on any local address.
                allowed.append(f"meta l4proto tcp th dport {port} fib daddr type local accept")
            else:
                allowed.append(f"{family} daddr {host} tcp dport {port} accept")
        rules = "\n    ".join(
            [
                *allowed,
                "meta l4proto tcp fib daddr type local reject with tcp reset",
                "fib daddr type local reject",
                "meta l4proto tcp ip daddr 169.254.0.0/16 reject with tcp reset",
                "ip daddr 169.254.0.0/16 reject",
                "meta l4proto tcp ip6 daddr fe80::/10 reject with tcp reset",
                "ip6 daddr fe80::/10 reject",
            ]
        )
        return f"""table inet {self.table} {{
  set uids {{ type uid; }}
  chain output {{
    type filter hook output priority filter; policy accept;
    meta skuid @uids jump builder
  }}
  chain builder {{
    {rules}
  }}
}}
"""

    def _install_nft_table(self) -> None:
        # Recreated from scratch at every start: a table left by a killed supervisor holds stale uids.
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, check=False)
        result = subprocess.run(
            ["nft", "-f", "-"], input=self._nft_ruleset(), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SandboxUnavailable(f"nftables refused the builder table: {result.stderr.strip()}")

    @staticmethod
    def _remove_runtime(path: Path) -> None:
        """Unmounts the caches bound under path, then deletes it (never through a mount: that is a cache)."""
        for mount_point in sorted(_mounts_under(path), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
        if _mounts_under(path):
            raise SandboxUnavailable(f"cannot unmount the builder caches under {path}")
        shutil.rmtree(path, ignore_errors=True)

    def _make_traversable(self, path: Path) -> None:
        """Builder users must reach their own directories under the data dir: every ancestor gets the
        search bit for others (o+x, never read), which the log records."""
        for parent in [path, *path.parents]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
                log.warning(
                    "sandbox: granted search permission (o+x) on %s so builder users reach the data dir",
                    parent,
                )

    # ---- per builder ---------------------------------------------------------------------------------

    def key(self, project_id: str, platform: str) -> str:
        return f"{project_id}-{platform}"

    def user_name(self, project_id: str, platform: str) -> str:
        digest = hashlib.sha256(f"{self.data_dir}\0{project_id}\0{platform}".encode()).hexdigest()
        return f"{USER_PREFIX}{self.instance}-{digest[:10]}"

    def runtime_dir(self, project_id: str, platform: str) -> Path:
        digest = hashlib.sha256(f"{project_id}\0{platform}".encode()).hexdigest()
        return self.runtime_root / digest[:10]

    def socket_path(self, project_id: str, platform: str) -> Path:
        return self.runtime_dir(project_id, platform) / "buildkitd.sock"

    def ensure_user(self, project_id: str, platform: str) -> BuilderUser:
        """The builder's own host user with its own block of 65536 subordinate uids and gids."""
        name = self.user_name(project_id, platform)
        with _subid_lock():
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                _run(
                    "useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--comment", f"opendepot builder {project_id}/{platform}",
                    name,
                )  # fmt: skip
                entry = pwd.getpwnam(name)
            if name not in _subid_owners(Path("/etc/subuid")) or name not in _subid_owners(
                Path("/etc/subgid")
            ):
                start = _next_subid_block()
                block = f"{start}-{start + SUBID_BLOCK - 1}"
                _run("usermod", "--add-subuids", block, "--add-subgids", block, name)
        return BuilderUser(name, entry.pw_uid, entry.pw_gid)

    def users(self) -> list[str]:
        prefix = f"{USER_PREFIX}{self.instance}-"
        return [entry.pw_name for entry in pwd.getpwall() if entry.pw_name.startswith(prefix)]

    def user_projects(self) -> dict[str, tuple[str, str]]:
        """This instance's builder users -> (project, platform), from the comment each was created with."""
        prefix = f"{USER_PREFIX}{self.instance}-"
        found = {}
        for entry in pwd.getpwall():
            comment = entry.pw_gecos.removeprefix("opendepot builder ")
            if entry.pw_name.startswith(prefix) and "/" in comment:
                project, platform = comment.split("/", 1)
                found[entry.pw_name] = (project, platform)
        return found

    def forget_deleted_projects(
        self, existing: Callable[[list[str]], set[str]], cache_dir: Callable[[str, str], Path]
    ) -> int:
        """Removes the users (and runtime dirs) of builders whose project was deleted; returns how many."""
        owners = self.user_projects()
        alive = existing(sorted({project for project, _platform in owners.values()}))
        removed = 0
        for name, (project, platform) in owners.items():
            if project in alive or self.cgroups.pids(self.key(project, platform)):
                continue
            self.remove_builder(project, platform, cache_dir(project, platform))
            log.info("builder user %s of deleted project %s removed", name, project)
            removed += 1
        return removed

    def remove_user(self, name: str) -> None:
        """Deletes a builder user (userdel also drops its /etc/subuid and /etc/subgid lines)."""
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(name).pw_uid
            subprocess.run(
                ["nft", "delete", "element", "inet", self.table, "uids", f"{{ {uid} }}"],
                capture_output=True,
                check=False,
            )
        with _subid_lock():
            subprocess.run(["userdel", name], capture_output=True, check=False)
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                subprocess.run(["groupdel", name], capture_output=True, check=False)

    def remove_builder(self, project_id: str, platform: str, cache_dir: Path) -> None:
        """A deleted project: its user goes, with the cache it owned (a later user could get its uid)."""
        self.remove_user(self.user_name(project_id, platform))
        self._remove_runtime(self.runtime_dir(project_id, platform))
        shutil.rmtree(cache_dir, ignore_errors=True)

    def prepare(
        self,
        project_id: str,
        platform: str,
        cache_dir: Path,
        config: str,
        cpus: int,
        memory_bytes: int,
        entitlements: Sequence[str] = (),
        keep_bytes: int = DEFAULT_CACHE.keep_bytes,
    ) -> tuple[list[str], Callable[[], None]]:
        """Everything before the launch: user, cache volume, runtime dir, config, nft set, cgroups.
        Returns the command line and the preexec_fn that joins the cgroups."""
        user = self.ensure_user(project_id, platform)
        key = self.key(project_id, platform)
        image = self._volume_image(cache_dir, cache_volume_bytes(keep_bytes, self.disk_max_bytes))
        runtime = self.runtime_dir(project_id, platform)
        # rootlesskit's state dir must not be left over from an earlier run
        self._remove_runtime(runtime)
        for directory in (runtime, runtime / "run", runtime / "cni", runtime / "root"):
            directory.mkdir(mode=0o700)
            os.chown(directory, user.uid, user.gid)
        # The cache, wherever the data dir is (its ancestors may well be closed to others, and something
        # like pytest may close them again at any time), appears at a path of our own that the user reaches.
        self._mount_volume(image, runtime / "root", user)
        config_path = self.config_path(project_id, platform)
        config_path.write_text(config)
        os.chown(config_path, user.uid, user.gid)
        self._claim_uid(user.uid)
        _run("nft", "add", "element", "inet", self.table, "uids", f"{{ {user.uid} }}")
        if killed := self.cgroups.kill(key):
            log.warning("builder %s: killed %d process(es) left in its cgroup", key, killed)
        procs = self.cgroups.create(key, self.pids_max, cpus, memory_bytes)
        return self.command(user, runtime, config_path, entitlements), join_cgroups(procs)

    def _claim_uid(self, uid: int) -> None:
        """A uid now belongs to one of our users: a table of another server instance that still lists it
        (that server was killed before it could remove a deleted user) would apply its registry exception."""
        command = ["nft", "list", "tables", "inet"]
        listed = subprocess.run(command, capture_output=True, text=True, check=False)
        for line in listed.stdout.splitlines():
            table = line.split()[-1] if line.startswith("table inet odb_") else ""
            if table and table != self.table:
                subprocess.run(
                    ["nft", "delete", "element", "inet", table, "uids", f"{{ {uid} }}"],
                    capture_output=True,
                    check=False,
                )

    def _volume_image(self, cache_dir: Path, size: int) -> Path:
        """The builder's cache is a file system of its own: an ext4 image of `size` bytes (sparse: the host
        disk holds what is written) in cache_dir, loop-mounted for the builder. A RUN step that writes without
        end fills its own volume and fails with ENOSPC, not the disk the database, the registry and every
        other tenant share. A cache dir holding anything else (a cache from before volumes, or of unsafe
        builders) is reset once. A policy grown since gets a grown volume; a smaller one takes effect at the
        next cache reset (shrinking would move the cache's blocks)."""
        image = cache_dir / VOLUME_IMAGE
        if cache_dir.exists() and any(entry.name != VOLUME_IMAGE for entry in cache_dir.iterdir()):
            log.warning("builder cache %s is not a volume; reset once for the sandboxed builder", cache_dir)
            shutil.rmtree(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.chown(cache_dir, 0, 0)
        os.chmod(cache_dir, 0o700)
        if not image.exists():
            _make_volume(image, size)
        elif image.stat().st_size < size:
            with image.open("r+b") as file:
                file.truncate(size)  # the file system grows into it once mounted (_mount_volume)
        return image

    @staticmethod
    def _mount_volume(image: Path, mount_point: Path, user: BuilderUser) -> None:
        """Mounts the volume (discard: what BuildKit's GC deletes leaves the host's disk too) and hands its
        root to the builder user. A volume whose root belongs to another uid (an earlier user of the
        project) is unusable rootless: it is made anew."""
        _run("mount", "-o", "loop,discard,nosuid,nodev", str(image), str(mount_point))
        device = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(mount_point)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        _run("resize2fs", device)  # grows to the image's size if the policy grew; nothing otherwise
        # The loop device reads and writes the image directly: its blocks are cached once (by the volume's
        # file system), not twice. Refused where the data dir's file system has no direct I/O: then cached.
        subprocess.run(["losetup", "--direct-io=on", device], capture_output=True, check=False)
        owner = mount_point.stat().st_uid
        if owner not in (0, user.uid):
            log.warning("builder volume %s was made by uid %d; made anew for the builder", image, owner)
            _run("umount", str(mount_point))
            _make_volume(image, image.stat().st_size)
            _run("mount", "-o", "loop,discard,nosuid,nodev", str(image), str(mount_point))
        os.chown(mount_point, user.uid, user.gid)
        os.chmod(mount_point, 0o700)

    def command(
        self, user: BuilderUser, runtime: Path, config_path: Path, entitlements: Sequence[str] = ()
    ) -> list[str]:
        path = ":".join(
            [str(Path(self.buildkitd).parent), "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        )
        # BuildKit's bridge keeps CNI state in /var/lib/cni (not configurable): the builder's own copy.
        # The config's path is put together here, so that only buildkitd's own command line names it
        # (tools find a builder's buildkitd by it), not rootlesskit's.
        script = 'rm -rf /var/lib/cni && ln -s "$1/cni" /var/lib/cni && config="$1/$2.toml" && shift 2 && '
        script_args = [str(runtime), config_path.stem]
        network = ["--detach-netns", "--disable-host-loopback"]
        registry_port = next((port for host, port in self.registry_endpoints if host == "127.0.0.1"), None)
        if "network.host" in entitlements:
            # "host" is buildkitd's own netns. Detached, that would be the host's: so buildkitd moves into
            # the sandbox's netns (behind slirp4netns, still under the nft table), and reaches the registry
            # through a forwarder from its 127.0.0.1 to slirp4netns's alias for the host's loopback, where
            # nft lets the builder user reach only the registry's port.
            network = []
            if registry_port is not None:
                script += '{ /usr/bin/python3 -c "$1" "$2" & } && shift 2 && '
                script_args += [REGISTRY_FORWARDER, str(registry_port)]
        script += 'exec "$@" --config "$config"'
        allow = [f"--allow-insecure-entitlement={e}" for e in entitlements]
        return [
            "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
            # The launcher dies with the supervisor; rootlesskit passes the signal on to buildkitd.
            "--pdeathsig=TERM",
            "env", "-i", f"HOME={runtime}", f"USER={user.name}", f"XDG_RUNTIME_DIR={runtime / 'run'}",
            f"PATH={path}",
            self.rootlesskit, "--net=slirp4netns", *network, "--slirp4netns-seccomp=true",
            "--copy-up=/etc", "--copy-up=/run", "--copy-up=/var/lib", f"--state-dir={runtime / 'rk'}",
            "/bin/sh", "-c", script, "-", *script_args,
            self.buildkitd, *allow,
        ]  # fmt: skip

    def config_path(self, project_id: str, platform: str) -> Path:
        return self.runtime_dir(project_id, platform) / f"{self.key(project_id, platform)}.toml"

    def buildkit_root(self, project_id: str, platform: str) -> Path:
        """Where buildkitd sees its cache: the cache dir, bound into the builder's runtime dir."""
        return self.runtime_dir(project_id, platform) / "root"

    def finish(self, project_id: str, platform: str) -> None:
        """After the builder stopped: anything left in its cgroup is killed, the groups and the cache's
        bind mount go."""
        key = self.key(project_id, platform)
        self.cgroups.kill(key)
        self.cgroups.remove(key)
        self._remove_runtime(self.runtime_dir(project_id, platform))

    def oom_kills(self, project_id: str, platform: str) -> int:
        return self.cgroups.oom_kills(self.key(project_id, platform))

    def memory_limit(self, project_id: str, platform: str) -> int | None:
        return self.cgroups.memory_limit(self.key(project_id, platform))


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point.startswith(prefix) or mount_point == str(path):
                found.append(mount_point)
    return found


def unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True
