"""What the builder sandbox costs (issue 13): a sandboxed server against one with --unsafe-builders, in the
same run, builds alternating between them; min / median / max of each and the ratio of the medians.

(a) RUN-heavy: 20 RUN steps that each write and hash 50 MB (--no-cache).      target ratio <= 1.10
(b) A 200 MB build context (a fresh random head each run, so all of it crosses). target ratio <= 1.10
(c) A 512 MiB download inside a RUN step from a test "internet" (a netns this
    benchmark creates, HTTP on a 198.18.x address routed through the host).     target ratio <= 1.25
(d) Cold builder start: GetBuildKitConnection on a new project until `active`.  target <= 2 s

With --baseline-src DIR, a third server runs the code under DIR sandboxed (`@baseline`) in (a), (b) and (d),
and each of those prints sandboxed / @baseline: what a change to the sandbox costs, measured in one run.

    .venv/bin/python bench/sandbox.py [--runs N] [--baseline-src DIR]   (root; ./dev setup first)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.build import new_build, until_active  # noqa: E402
from bench.realistic_app import machine_note  # noqa: E402
from opendepot.builders.sandbox import Sandbox  # noqa: E402
from tests.support.builds import BUSYBOX, builds_possible  # noqa: E402
from tests.support.clients import depot  # noqa: E402
from tests.support.netns import TestInternet  # noqa: E402
from tests.support.server import Server  # noqa: E402

MODES = ("sandboxed", "unsafe")
BASELINE = "@baseline"


def context(directory: Path, dockerfile: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, directory / "busybox")
    (directory / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n' + dockerfile
    )
    return directory


def build(server: Server, token: str, project: str, ctx: Path) -> float:
    start = time.perf_counter()
    result = depot(
        server.url, token, "build", "--project", project, "--progress", "plain", "--no-cache", str(ctx),
        timeout=900,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"build failed: {(result.stdout + result.stderr)[-3000:]}")
    return elapsed


def summary(name: str, times: dict[str, list[float]], target: float) -> None:
    med = {mode: statistics.median(values) for mode, values in times.items()}
    ratio = med["sandboxed"] / med["unsafe"]
    for mode, values in times.items():
        print(
            f"  {name:<22} {mode:<10} min {min(values):7.2f}  median {med[mode]:7.2f}"
            f"  max {max(values):7.2f} s"
        )
    verdict = "ok" if ratio <= target else "OVER TARGET"
    print(f"  {name:<22} ratio sandboxed/unsafe (medians) {ratio:.3f}  (target <= {target}) {verdict}")
    if BASELINE in med:
        print(f"  {name:<22} ratio sandboxed/{BASELINE} (medians) {med['sandboxed'] / med[BASELINE]:.3f}")


def alternate(
    runs: int, measure: Callable[[str, int], float], modes: Sequence[str] = MODES
) -> dict[str, list[float]]:
    """Each run measures every mode once, the order rotated by one each run."""
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for i in range(runs):
        for mode in [*modes[i % len(modes) :], *modes[: i % len(modes)]]:
            times[mode].append(measure(mode, i))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="a src dir to run sandboxed as a third side")
    args = parser.parse_args()
    if reason := builds_possible():
        raise SystemExit(f"cannot benchmark: {reason}")

    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    servers: dict[str, Server] = {}
    inet = TestInternet.create(work / "internet")
    try:
        with (inet.root / "big.bin").open("wb") as f:
            f.truncate(512 << 20)
        for mode in MODES:
            extra = ["--unsafe-builders"] if mode == "unsafe" else []
            (work / mode).mkdir()
            servers[mode] = Server(data_dir=work / mode / "data", database_url=None, extra_args=extra).start(
                timeout=180
            )
        compared: tuple[str, ...] = MODES
        if args.baseline_src:
            if not (args.baseline_src / "opendepot" / "__init__.py").exists():
                raise SystemExit(f"bench/sandbox.py: --baseline-src {args.baseline_src} holds no opendepot")
            (work / "baseline").mkdir()
            servers[BASELINE] = Server(
                data_dir=work / "baseline" / "data",
                database_url=None,
                python_path=args.baseline_src.resolve(),
            ).start(timeout=180)
            compared = (*MODES, BASELINE)
        tokens = {mode: servers[mode].new_organization()[1] for mode in servers}

        def project(mode: str, token: str | None = None) -> str:
            created = depot(
                servers[mode].url, token or tokens[mode], "projects", "create", f"b-{uuid.uuid4().hex[:6]}"
            )
            return str(json.loads(created.stdout)["project_id"])

        projects = {mode: project(mode) for mode in servers}
        print(f"bench/sandbox.py: {args.runs} runs each; {machine_note()}")

        run_heavy = context(
            work / "run-heavy",
            "".join(
                f"RUN dd if=/dev/zero of=/f{n} bs=1M count=50 2>/dev/null && sha256sum /f{n}\n"
                for n in range(20)
            ),
        )
        for mode in compared:  # warm-up: the builders are up, busybox layers are in the cache
            build(servers[mode], tokens[mode], projects[mode], run_heavy)
        summary(
            "RUN-heavy (20x50 MB)",
            alternate(
                args.runs,
                lambda mode, _i: build(servers[mode], tokens[mode], projects[mode], run_heavy),
                compared,
            ),
            1.10,
        )

        big = context(work / "context", "COPY big /big\nRUN wc -c /big\n")
        with (big / "big").open("wb") as f:
            f.write(os.urandom(200 << 20))

        def context_build(mode: str, _i: int) -> float:
            with (big / "big").open("r+b") as f:
                f.write(os.urandom(4096))  # a changed file: all of it crosses again
            return build(servers[mode], tokens[mode], projects[mode], big)

        summary("200 MB context", alternate(args.runs, context_build, compared), 1.10)

        download = context(
            work / "download",
            f"RUN printf 'GET /big.bin HTTP/1.0\\r\\n\\r\\n' | nc {inet.address} 80 | wc -c\n",
        )
        summary(
            "512 MiB download",
            alternate(
                args.runs, lambda mode, _i: build(servers[mode], tokens[mode], projects[mode], download)
            ),
            1.25,
        )

        def cold_start(mode: str, _i: int) -> float:
            server = servers[mode]
            with httpx.Client(timeout=60) as http:
                build_id, build_token = new_build(http, server, project(mode, server.admin_token))
                start = time.perf_counter()
                until_active(http, server, build_id, build_token)
                return time.perf_counter() - start

        cold = alternate(args.runs, cold_start, compared)
        for mode, values in cold.items():
            print(
                f"  {'cold builder start':<22} {mode:<10} min {min(values):7.2f}  "
                f"median {statistics.median(values):7.2f}  max {max(values):7.2f} s  (target <= 2 s)"
            )
    finally:
        for mode, server in servers.items():
            server.stop()
            if mode != "unsafe":
                sandbox = Sandbox(server.data_dir, "buildkitd")
                for name in sandbox.users():
                    sandbox.remove_user(name)
        inet.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
