"""The step recorder's write: `steps.apply` of a no-change rebuild's last status, this checkout vs a baseline.

When a build's solve ends the status tap's recorder writes its steps at once, and the CLI's FinishBuild waits
for that write (SQLite's one write lock): it is on the path of every `depot build`. Each run is a child
process per side (this checkout's src/, and --baseline-src's) on a fresh SQLite store: a project whose earlier
build ran the same steps, then `steps.apply` of what a no-change rebuild's Status stream reports at its end
(6 vertices, 18 updates, 3 of them cached: the shape the tap sees for bench/build.py's busybox rebuild) into
each of many new builds. Per side and run: the median time of one apply, in its own transaction. Runs
alternate which side goes first; prints min/median/max of the runs' medians and the ratio.

    ./dev bench steps [--runs N] [--builds N] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP_NAMES = (
    ("[internal] load build definition from Dockerfile", False),
    ("[internal] load .dockerignore", False),
    ("[internal] load build context", False),
    ("[1/3] FROM localhost/busybox", True),
    ("[2/3] COPY . /src", True),
    ("[3/3] RUN echo bench > /b", True),
)


def child(builds: int) -> None:
    """Runs in a process whose PYTHONPATH is one side's src/: prints the apply times (ms) as JSON."""
    from opendepot.builds import service, steps
    from opendepot.builds.steps import VertexUpdate
    from opendepot.store import Store
    from tests.support.domain import organization_with_project

    def report(start: datetime, first_run: bool) -> list[VertexUpdate]:
        updates = []
        for i, (name, cacheable) in enumerate(STEP_NAMES):
            digest = f"sha256:{i:064x}" if first_run else f"sha256:{i + 100:064x}"
            began, done = start + timedelta(milliseconds=i), start + timedelta(milliseconds=i + 1)
            cached = cacheable and not first_run
            updates += [
                VertexUpdate(digest, name, None, None, False, ""),
                VertexUpdate(digest, name, began, None, cached, ""),
                VertexUpdate(digest, name, began, done, cached, ""),
            ]
        return updates

    with tempfile.TemporaryDirectory(prefix="opendepot-bench-steps-") as tmp:
        store = Store.open(f"sqlite:///{tmp}/opendepot.db", Path(tmp))
        with store.transaction() as session:
            admin, project = organization_with_project(session)
            ids = [service.create_build(session, admin, project.id, [])[0].id for _ in range(builds + 1)]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        store.call(lambda s: steps.apply(s, ids[0], report(start, first_run=True), []))
        times = []
        for build_id in ids[1:]:
            updates = report(start + timedelta(hours=1), first_run=False)
            began = time.perf_counter()
            with store.transaction() as session:
                steps.apply(session, build_id, updates, [])
            times.append((time.perf_counter() - began) * 1000)
        store.dispose()
    print(json.dumps(times[len(times) // 10 :]))  # the first tenth warms the statement caches


def run_side(src: Path, builds: int) -> float:
    env = {**os.environ, "PYTHONPATH": f"{src.resolve()}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--builds", str(builds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    times: list[float] = json.loads(out.splitlines()[-1])
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--builds", type=int, default=200, help="applies timed per run and side")
    parser.add_argument("--baseline-src", type=Path, help="src/ of another checkout, e.g. main's")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.builds)
        return
    sides = {"this": ROOT / "src"}
    if args.baseline_src is not None:
        if not (args.baseline_src / "opendepot" / "__init__.py").exists():
            sys.exit(f"bench/steps.py: --baseline-src {args.baseline_src} holds no opendepot package")
        sides["baseline"] = args.baseline_src
    medians: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(args.runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            medians[name].append(run_side(sides[name], args.builds))
        print(f"  run {i + 1}: " + ", ".join(f"{n} {medians[n][-1]:.3f} ms" for n in names), flush=True)
    print(f"\nbench/steps.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"steps.apply of a no-change rebuild's last status, median of {args.builds} applies a run:")
    for name, values in medians.items():
        print(f"  {name:<9} {min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f} ms")
    if "baseline" in medians:
        ratios = [a / b for a, b in zip(medians["this"], medians["baseline"], strict=True)]
        ratio = statistics.median(medians["this"]) / statistics.median(medians["baseline"])
        print(f"  this / baseline: {ratio:.2f}x (runs {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
