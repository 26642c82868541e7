"""The sandbox's pure parts: host-global names per server instance, the nft ruleset, the launch command."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from opendepot.builders.backend import cache_volume_bytes, gc_keep_bytes
from opendepot.builders.sandbox import BuilderUser, Sandbox, instance_id
from opendepot.projects.policy import GIB
from opendepot.server.config import ConfigError, add_arguments, resolve


def test_names_differ_per_data_dir_project_and_platform(tmp_path: Path) -> None:
    one, two = Sandbox(tmp_path / "a", "buildkitd"), Sandbox(tmp_path / "b", "buildkitd")
    assert one.instance != two.instance and one.table != two.table
    names = {s.user_name(p, pl) for s in (one, two) for p in ("p1", "p2") for pl in ("amd64", "arm64")}
    assert len(names) == 8
    # useradd's limit is 32 characters
    assert all(name.startswith("odb-") and len(name) <= 32 for name in names)
    assert one.user_name("p1", "amd64") == Sandbox(tmp_path / "a", "x").user_name("p1", "amd64")
    assert instance_id(tmp_path / "a") == one.instance


def test_socket_paths_stay_short_whatever_the_data_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120) / "data"
    sandbox = Sandbox(deep, "buildkitd")
    # buildkitd puts its own sockets under the runtime dir: unix socket paths must stay under 108 bytes.
    assert len(str(sandbox.runtime_dir("abcdefghij", "amd64") / "run/buildkit/otel-grpc.sock")) < 100


def test_ruleset_allows_only_the_registry_among_local_destinations(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path, "buildkitd", registry_endpoints=[("127.0.0.1", 47500)])
    rules = sandbox._nft_ruleset()
    assert f"table inet odb_{sandbox.instance}" in rules
    assert "meta skuid @uids jump builder" in rules
    lines = [line.strip() for line in rules.splitlines()]
    accept = lines.index("ip daddr 127.0.0.1 tcp dport 47500 accept")
    reject = lines.index("meta l4proto tcp fib daddr type local reject with tcp reset")
    assert accept < reject
    assert "ip daddr 169.254.0.0/16 reject" in lines
    everywhere = Sandbox(tmp_path, "buildkitd", registry_endpoints=[("0.0.0.0", 5000)])._nft_ruleset()
    assert "meta l4proto tcp th dport 5000 fib daddr type local accept" in everywhere


def test_launch_drops_to_the_builder_user_with_a_death_signal(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path, "/opt/bk/buildkitd", rootlesskit="/opt/bk/rootlesskit")
    user = BuilderUser("odb-x", 1234, 1235)
    runtime = sandbox.runtime_dir("p", "amd64")
    command = sandbox.command(user, runtime, runtime / "buildkitd.toml")
    assert command[:6] == [
        "setpriv",
        "--reuid=1234",
        "--regid=1235",
        "--init-groups",
        "--pdeathsig=TERM",
        "env",
    ]
    rk = command.index("/opt/bk/rootlesskit")
    assert {"--net=slirp4netns", "--detach-netns", "--disable-host-loopback"} <= set(command[rk:])
    assert command[-1] == "/opt/bk/buildkitd"
    assert 'exec "$@" --config "$config"' in command[command.index("-c") + 1]


def test_unsafe_builders_is_a_flag_and_pids_max_is_checked(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path), "--unsafe-builders"])
    assert resolve(args, {}).builders.unsafe_builders is True
    tap_off = resolve(parser.parse_args(["--data-dir", str(tmp_path), "--status-tap", "false"]), {})
    assert tap_off.gateway.status_tap is False
    config = resolve(parser.parse_args(["--data-dir", str(tmp_path)]), {})
    assert config.builders.unsafe_builders is False and config.builders.pids_max == 1024
    args = parser.parse_args(["--data-dir", str(tmp_path), "--builder-pids-max", "10"])
    with pytest.raises(ConfigError, match="builder-pids-max"):
        resolve(args, {})


def test_builder_memory_limit_is_off_by_default_and_checked(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--data-dir", str(tmp_path)]
    assert resolve(parser.parse_args(base), {}).builders.memory_limit_mib == 0
    capped = resolve(parser.parse_args([*base, "--builder-memory-limit-mib", "256"]), {})
    assert capped.builders.memory_limit_mib == 256
    with pytest.raises(ConfigError, match="builder-memory-limit-mib"):
        resolve(parser.parse_args([*base, "--builder-memory-limit-mib", "10"]), {})


def test_builder_disk_max_is_64_gib_by_default_and_checked(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--data-dir", str(tmp_path)]
    assert resolve(parser.parse_args(base), {}).builders.disk_max_mib == 65536
    assert (
        resolve(parser.parse_args([*base, "--builder-disk-max-mib", "512"]), {}).builders.disk_max_mib == 512
    )
    with pytest.raises(ConfigError, match="builder-disk-max-mib"):
        resolve(parser.parse_args([*base, "--builder-disk-max-mib", "100"]), {})


def test_a_volume_is_the_policy_plus_a_quarter_at_most_the_cap_and_gc_aims_below_it() -> None:
    assert cache_volume_bytes(50 * GIB, 64 * GIB) == 63 * GIB  # 62.5 rounded up to whole GiB
    assert cache_volume_bytes(1, 64 * GIB) == GIB
    assert cache_volume_bytes(1 << 50, 64 * GIB) == 64 * GIB  # a policy of 1 PiB: the operator's cap
    assert cache_volume_bytes(50 * GIB, 512 << 20) == 512 << 20
    assert gc_keep_bytes(50 * GIB, 64 * GIB) == 50 * GIB
    assert gc_keep_bytes(50 * GIB, 512 << 20) == (512 << 20) * 4 // 5


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.ext4") is None, reason="mkfs.ext4 as root")
def test_a_cache_dir_becomes_a_sparse_volume_image_that_grows_with_its_policy(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path / "data", "buildkitd")
    cache = tmp_path / "projects" / "p" / "amd64"
    # A cache from before volumes (or of unsafe builders): reset once.
    (cache / "runc-overlayfs").mkdir(parents=True)
    (cache / "cache.db").write_bytes(b"x")
    image = sandbox._volume_image(cache, 2 * GIB)
    assert [p.name for p in cache.iterdir()] == ["volume.ext4"]
    assert image.stat().st_size == 2 * GIB and image.stat().st_blocks * 512 < 64 << 20  # sparse
    assert (image.stat().st_mode & 0o777, os.stat(cache).st_mode & 0o777) == (0o600, 0o700)
    assert _is_ext4(image)
    # The same size again: the same file system; a larger policy: the image grows (the file system follows
    # when mounted); a smaller one waits for a cache reset.
    inode = image.stat().st_ino
    assert sandbox._volume_image(cache, 2 * GIB).stat().st_ino == inode
    assert sandbox._volume_image(cache, 3 * GIB).stat().st_size == 3 * GIB
    assert sandbox._volume_image(cache, GIB).stat().st_size == 3 * GIB
    assert image.stat().st_ino == inode


def _is_ext4(image: Path) -> bool:
    """The superblock's magic (0xEF53 at byte 1080) and the extents feature ext4 sets."""
    with image.open("rb") as file:
        file.seek(1024)
        block = file.read(1024)
    return block[56:58] == b"\x53\xef" and bool(int.from_bytes(block[96:100], "little") & 0x40)
