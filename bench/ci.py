"""The headline figure: a realistic CI build on a fresh runner vs through opendepot's persistent cache.

The application (bench/realistic_app.py): a C program of a few hundred source files, FROM a Debian
bookworm image made here (`opendepot images seed`), a dependency stage that apt-get installs gcc, libc6-dev
and make from the Debian mirror in a RUN step, a make stage, and a final stage that runs the binary.

(a) a fresh CI runner: a new buildkitd (same binary, root, empty cache) started for each run, then
    `buildctl build` of the app; an empty cache builds everything, whatever changed. Timed: the build alone
    (the buildkitd start is shown apart; GitHub's setup-buildx step costs more than ours).
(b) `depot build` through a running `opendepot serve`, with the project's persistent cache:
    - after a one-line source change (one module recompiles, the binary relinks),
    - with no change at all,
    - after a change of the package list (the apt step runs again, with its cache mounts kept).
Every (b) case is compared with (a): speed-up = median (a) / median (b), with the range over paired runs.
Runs alternate (a, b / b, a) so that neither side always follows the other.

    .venv/bin/python bench/ci.py [--runs 5] [--modules 300]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import realistic_app as app  # noqa: E402
from opendepot.gen.depot.core.v1 import project_pb  # noqa: E402
from tests.support.builds import builds_possible  # noqa: E402
from tests.support.processes import stop  # noqa: E402
from tests.support.rpc import call  # noqa: E402
from tests.support.server import Server  # noqa: E402


@contextlib.contextmanager
def fresh_buildkitd(work: Path, registry: str) -> Iterator[tuple[str, float]]:
    """A new buildkitd with an empty state directory, as on a new CI runner; yields its address and how
    long it took to answer."""
    root = Path(tempfile.mkdtemp(prefix="ci-runner-", dir=work))
    socket = root / "buildkitd.sock"
    config = root / "buildkitd.toml"
    config.write_text(f'[registry."{registry}"]\n  http = true\n[worker.containerd]\n  enabled = false\n')
    log = (root / "buildkitd.log").open("wb")
    start = time.perf_counter()
    process = subprocess.Popen(
        [
            str(app.VENV_BIN / "buildkitd"),
            "--config",
            str(config),
            "--root",
            str(root / "state"),
            "--addr",
            f"unix://{socket}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        address = f"unix://{socket}"
        while subprocess.run(
            [str(app.VENV_BIN / "buildctl"), "--addr", address, "debug", "workers"],
            capture_output=True,
            check=False,
        ).returncode:
            if process.poll() is not None:
                raise RuntimeError(f"buildkitd exited: {(root / 'buildkitd.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield address, time.perf_counter() - start
    finally:
        stop(process)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modules", type=int, default=300, help="generated C source files")
    args = parser.parse_args()
    if (why := builds_possible()) is not None:
        sys.exit(f"bench/ci.py cannot run here: {why}")
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-ci-") as tmp:
        work = Path(tmp)
        srv = Server(data_dir=work / "data", database_url=None).start(timeout=120)
        try:
            token = srv.admin_token
            with httpx.Client(timeout=60) as http:
                r = call(
                    http,
                    srv.url,
                    "depot.core.v1.ProjectService/CreateProject",
                    project_pb.CreateProjectRequest(name="ci-bench"),
                    token,
                )
                created = r.message(project_pb.CreateProjectResponse).project
                assert created is not None
                project = created.project_id
            base = app.seed_base(srv.url, token, project, srv.registry_host)
            print(f"base image: {base}", flush=True)
            docker_dir = app.docker_config(work / "docker", srv.registry_host, token)
            context = app.write_app(work / "app", base, args.modules)
            env = app.depot_env(srv.url, token, docker_dir)
            buildctl_env = {**env}

            first = app.timed(app.depot_build(project, context), env)
            print(f"opendepot's first build (empty project cache): {first:.1f} s", flush=True)

            cold: list[float] = []
            starts: list[float] = []
            small: list[float] = []
            unchanged: list[float] = []
            dependency: list[float] = []

            def fresh_runner(i: int) -> None:
                app.small_change(context, 1000 + i)
                with fresh_buildkitd(work, srv.registry_host) as (address, started):
                    starts.append(started)
                    cold.append(
                        app.timed(
                            [
                                str(app.VENV_BIN / "buildctl"),
                                "--addr",
                                address,
                                "build",
                                "--frontend",
                                "dockerfile.v0",
                                "--local",
                                f"context={context}",
                                "--local",
                                f"dockerfile={context}",
                            ],
                            buildctl_env,
                        )
                    )
                print(f"  run {i + 1}: fresh runner {cold[-1]:.1f} s", flush=True)

            def opendepot_cache(i: int) -> None:
                app.small_change(context, i + 1)
                small.append(app.timed(app.depot_build(project, context), env))
                unchanged.append(app.timed(app.depot_build(project, context), env))
                app.dependency_change(context, i + 1)
                dependency.append(app.timed(app.depot_build(project, context), env))
                print(
                    f"  run {i + 1}: opendepot small change {small[-1]:.1f} s, "
                    f"no change {unchanged[-1]:.1f} s, dependency change {dependency[-1]:.1f} s",
                    flush=True,
                )

            app.alternate(args.runs, fresh_runner, opendepot_cache)
        finally:
            srv.stop()

    print(f"\nbench/ci.py: {args.runs} alternating runs, {args.modules} C modules; {app.machine_note()}")
    print("                                        min / median / max        speed-up vs (a)")
    rows = [
        ("(a) fresh CI runner, full build", cold, None),
        ("    (its buildkitd start, not counted)", starts, None),
        ("(b) opendepot, one-line source change", small, cold),
        ("(b) opendepot, no change", unchanged, cold),
        ("(b) opendepot, dependency change", dependency, cold),
    ]
    for label, values, baseline in rows:
        speedup = app.ratio_spread(baseline, values) if baseline else ""
        print(f"{label:<40}{app.spread(values)}   {speedup}")


if __name__ == "__main__":
    main()
