"""A builder's buildkitd killed mid-build (issue 14, "Crash and restart"), through `opendepot serve` with the
official depot CLI: the build fails, nothing of that builder survives (its cgroup and its host user hold no
process), and the project's next build works and hits the cache the builder had before."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from opendepot.builders.sandbox import Sandbox
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import depot, start_build
from tests.support.server import Server, remove_builder_users

pytestmark = pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))


def wait_until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid and (entry / "status").exists():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def build(server: Server, token: str, project: str, context: Path) -> subprocess.CompletedProcess[str]:
    return depot(
        server.url, token, "build", "--project", project, "--progress", "plain", str(context), timeout=300
    )


def test_a_buildkitd_killed_mid_build_takes_its_run_steps_along_and_the_next_build_hits_the_cache(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir=data_dir, database_url=None, extra_args=[]).start(timeout=180)
    try:
        _org, token = server.new_organization()
        created = depot(server.url, token, "projects", "create", f"p-{uuid.uuid4().hex[:6]}")
        assert created.returncode == 0, created.stderr
        project = str(json.loads(created.stdout)["project_id"])
        marker = uuid.uuid4().hex[:8]
        cached_step = f"echo {marker} > /warm"

        first = build(server, token, project, busybox_context(tmp_path / "first", cached_step))
        assert first.returncode == 0, first.stdout + first.stderr

        sandbox = Sandbox(data_dir, "buildkitd")
        key = f"{project}-amd64"
        uid = pwd.getpwnam(sandbox.user_name(project, "amd64")).pw_uid
        long_context = busybox_context(tmp_path / "long", cached_step, "sleep 30")
        long_build = start_build(server, token, project, long_context)
        try:
            assert wait_until(lambda: any(comm(p) == "sleep" for p in sandbox.cgroups.pids(key)), 120), (
                "the RUN step's sleep runs in the builder's cgroup"
            )
            pids = sandbox.cgroups.pids(key)
            buildkitd = next(p for p in pids if comm(p) == "buildkitd")
            print(
                f"\nbuilder cgroup before kill -9 of buildkitd {buildkitd}:",
                sorted((p, comm(p)) for p in pids),
            )
            os.kill(buildkitd, signal.SIGKILL)
            output, _ = long_build.communicate(timeout=120)
        finally:
            if long_build.poll() is None:
                long_build.kill()
        print(f"depot build exit {long_build.returncode}; last lines:", output.strip().splitlines()[-3:])
        assert long_build.returncode != 0, output

        # Every process the killed builder had (rootlesskit, slirp4netns, runc, the RUN step) is gone: none
        # is left in its cgroup or under its host user. A fresh builder the reconciler may start for a lease
        # the failed build still holds has other pids.
        def left() -> list[tuple[int, str]]:
            now = {*sandbox.cgroups.pids(key), *processes_of_uid(uid)}
            return [(p, comm(p)) for p in sorted(now & set(pids))]

        gone = wait_until(lambda: not left(), 30)
        print("left of the killed builder (cgroup, uid):", left() or "nothing")
        assert gone, left()
        assert f"builder {project}/amd64 exited" in server.log_text()

        again = build(server, token, project, busybox_context(tmp_path / "again", cached_step, "echo again"))
        output = again.stdout + again.stderr
        assert again.returncode == 0, output
        lines = output.splitlines()
        # BuildKit's plain progress: "#9 [2/3] RUN ... <marker>", then "#9 CACHED" for a cache hit.
        warm = [(line, lines[i + 1]) for i, line in enumerate(lines[:-1]) if marker in line]
        print("rebuild, the earlier step:", warm)
        assert warm and all(after.endswith("CACHED") for _line, after in warm), output
    finally:
        server.stop()
        remove_builder_users(data_dir)


def test_a_wedged_buildkitd_is_restarted_and_the_next_build_works(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # Kept well past the test, so that only the wedge can stop the builder.
    server = Server(data_dir=data_dir, database_url=None, extra_args=["--builder-idle-timeout", "600"])
    server.start(timeout=180)
    try:
        _org, token = server.new_organization()
        created = depot(server.url, token, "projects", "create", f"p-{uuid.uuid4().hex[:6]}")
        assert created.returncode == 0, created.stderr
        project = str(json.loads(created.stdout)["project_id"])
        first = build(server, token, project, busybox_context(tmp_path / "first", "echo one"))
        assert first.returncode == 0, first.stdout + first.stderr

        sandbox = Sandbox(data_dir, "buildkitd")
        key = f"{project}-amd64"
        pids = sandbox.cgroups.pids(key)
        buildkitd = next(p for p in pids if comm(p) == "buildkitd")
        # Stopped, buildkitd still has its socket listening (the kernel accepts), but answers nothing.
        os.kill(buildkitd, signal.SIGSTOP)
        wedged = wait_until(lambda: "wedged: BuildKit does not answer" in server.log_text(), 90)
        print(
            "\n" + next((ln for ln in server.log_text().splitlines() if "wedged:" in ln), "no wedge logged")
        )
        assert wedged
        assert wait_until(lambda: not set(pids) & set(sandbox.cgroups.pids(key)), 60)

        again = build(server, token, project, busybox_context(tmp_path / "again", "echo two"))
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        server.stop()
        remove_builder_users(data_dir)
