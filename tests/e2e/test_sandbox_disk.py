"""A builder's cache is a volume of its own: a RUN step that writes without end fills that volume and fails
with ENOSPC, where it filled the disk the database, the registry and every other tenant share. The server
caps every builder's volume at 512 MiB (--builder-disk-max-mib) so the test writes little."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_builds import build, builds_of, new_project
from tests.support.builds import builds_possible, busybox_context
from tests.support.server import Server, with_builder_users_removed

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))

MAX_MIB = 512
# Writes up to 768 MiB in 1 MiB blocks (bounded: should the volume not hold, it still ends).
FILL = "dd if=/dev/zero of=/fill bs=1048576 count=768; echo DD-EXIT $?; ls -l /fill; exit 1"
# Seconds from the failed build's end until its volume has room again: the server's prune after the build
# (BuildKit's own GC, throttled to once a minute, took ~60 s). Generous for a loaded CI machine.
RELIEVED_WITHIN = 30


@pytest.fixture(scope="module")
def disk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("disk") / "data"
    args = ["--builder-disk-max-mib", str(MAX_MIB)]
    with with_builder_users_removed(Server(data_dir=data_dir, database_url=None, extra_args=args)) as server:
        yield server


def volume_free_bytes(image: Path) -> int:
    """Free bytes of the file system in image, where the builder has it mounted."""
    losetup = ["losetup", "--noheadings", "--output", "NAME", "--associated", str(image)]
    device = subprocess.run(losetup, capture_output=True, text=True, check=True).stdout.split()[0]
    findmnt = ["findmnt", "--noheadings", "--first-only", "--output", "TARGET", "--source", device]
    target = subprocess.run(findmnt, capture_output=True, text=True, check=True).stdout.strip()
    stats = os.statvfs(target)
    return stats.f_bavail * stats.f_frsize


def test_a_step_that_fills_its_volume_fails_and_the_host_disk_keeps_the_rest(
    disk_server: Server, tmp_path: Path
) -> None:
    server = disk_server
    _org, token = server.new_organization()
    project = new_project(server, token, "filler")
    code, output = build(server, token, project, busybox_context(tmp_path / "fill", FILL))
    print("\n" + "\n".join(line for line in output.splitlines() if "DD-EXIT" in line or "space" in line))
    assert code != 0, output
    assert "No space left on device" in output, output
    assert "DD-EXIT 1" in output, output
    [failed] = builds_of(server, token, project)
    assert failed["status"] == "failed"
    # What the builder wrote is in its volume: an image of 512 MiB whose blocks on the host stay under it.
    image = server.data_dir / "projects" / project / "amd64" / "volume.ext4"
    assert sorted(p.name for p in image.parent.iterdir()) == ["volume.ext4"]
    stat = image.stat()
    assert stat.st_size == MAX_MIB << 20
    assert stat.st_blocks * 512 <= MAX_MIB << 20
    print(f"volume: {stat.st_size >> 20} MiB, {stat.st_blocks * 512 >> 20} MiB of it on the host's disk")
    assert (stat.st_mode & 0o777, stat.st_uid) == (0o600, 0)  # root's: the builder user sees its mount only
    assert os.stat(image.parent).st_mode & 0o777 == 0o700

    # Once the build is over the server prunes the nearly full volume to BuildKit's GC target (BuildKit's
    # own GC runs at most once a minute): the failed step's layer goes, the volume is usable again at once,
    # and the same builder builds and keeps its cache across builds.
    started = time.monotonic()
    while (free := volume_free_bytes(image)) < MAX_MIB << 19:
        assert time.monotonic() - started < RELIEVED_WITHIN, f"the volume stayed full: {free} bytes free"
        time.sleep(0.5)
    print(f"volume usable again after {time.monotonic() - started:.1f} s: {free >> 20} MiB free")
    # Mounted with discard: what BuildKit deleted leaves the host's disk too.
    while (held := image.stat().st_blocks * 512) > MAX_MIB << 18:
        assert time.monotonic() - started < 180, f"the host still holds {held} bytes of the volume"
        time.sleep(1)
    print(f"the host's disk holds {held >> 20} MiB of the volume")
    context = busybox_context(tmp_path / "small", "echo small > /small")
    code, output = build(server, token, project, context)
    assert code == 0, output
    code, output = build(server, token, project, context)
    assert code == 0 and "CACHED" in output, output
