"""The store writes on every `depot build`'s path, this checkout vs a baseline: each a unit of work in its own
transaction, timed alone (one process, no contention: what the code costs, not the machine's noise).

- `steps.apply` (the recorder): what a no-change rebuild's Status stream reports at its end (6 vertices,
  18 updates, 3 of them cached: the shape the tap sees for bench/build.py's busybox rebuild), into a new
  build of a project whose earlier build ran the same steps. FinishBuild waits for it (SQLite's write lock).
- `record_status` (ReportStatusStream): the CLI's own message, its `[depot] launching` and `connecting`
  vertices (4 updates, 4 payloads); its stream ends just as the CLI's solve starts.
- `heartbeat_due` (ReportBuildHealth): the CLI's first heartbeat, beside its GetBuildKitConnection.
- `finish_build` (FinishBuild): the CLI waits for it before it exits.

Each run is a child process per side (this checkout's src/, and --baseline-src's) on a fresh SQLite store,
each unit over many new builds; per side, unit and run: the median time of one. Runs alternate which side goes
first; prints min/median/max of the runs' medians and the ratio per unit.

    ./dev bench writes [--runs N] [--builds N] [--baseline-src DIR]
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]

STEP_NAMES = (
    ("[internal] load build definition from Dockerfile", False),
    ("[internal] load .dockerignore", False),
    ("[internal] load build context", False),
    ("[1/3] FROM localhost/busybox", True),
    ("[2/3] COPY . /src", True),
    ("[3/3] RUN echo bench > /b", True),
)
# What the depot CLI reports on ReportStatusStream before its solve.
CLI_STEP_NAMES = ("[depot] launching amd64 machine", "[depot] connecting to amd64 machine")
PAYLOADS = [bytes(120)] * 4  # its serialized StatusResponses, kept as received
UNITS = ("record_status", "heartbeat_due", "steps.apply", "finish_build")


def child(builds: int) -> None:
    """Runs in a process whose PYTHONPATH is one side's src/: prints each unit's times (ms) as JSON."""
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

    def cli_report(start: datetime) -> list[VertexUpdate]:
        updates = []
        for i, name in enumerate(CLI_STEP_NAMES):
            digest, done = f"sha256:{i + 200:064x}", start + timedelta(milliseconds=3)
            updates += [
                VertexUpdate(digest, name, start, None, False, ""),
                VertexUpdate(digest, name, start, done, False, ""),
            ]
        return updates

    times: dict[str, list[float]] = {unit: [] for unit in UNITS}
    with tempfile.TemporaryDirectory(prefix="opendepot-bench-writes-") as tmp:
        store = Store.open(f"sqlite:///{tmp}/opendepot.db", Path(tmp))
        with store.transaction() as session:
            admin, project = organization_with_project(session)
            ids = [service.create_build(session, admin, project.id, [])[0].id for _ in range(builds + 1)]
        start = datetime(2026, 1, 1, tzinfo=UTC)
        store.call(lambda s: steps.apply(s, ids[0], report(start, first_run=True), []))
        later = start + timedelta(hours=1)
        units: dict[str, Callable[[Session, str], object]] = {
            "record_status": lambda s, b: service.record_status(s, admin, b, PAYLOADS, cli_report(later)),
            "heartbeat_due": lambda s, b: service.heartbeat_due(s, admin, b, "amd64"),
            "steps.apply": lambda s, b: steps.apply(s, b, report(later, first_run=False), []),
            "finish_build": lambda s, b: service.finish_build(s, admin, b, service.Outcome.success()),
        }
        for build_id in ids[1:]:
            with store.transaction() as session:  # as GetBuildKitConnection does: a lease to beat for
                service.acquire(session, admin, build_id, "amd64")
            for unit, write in units.items():  # in a build's order
                began = time.perf_counter()
                with store.transaction() as session:
                    write(session, build_id)
                times[unit].append((time.perf_counter() - began) * 1000)
        store.dispose()
    # The first tenth warms the statement caches.
    print(json.dumps({unit: values[len(values) // 10 :] for unit, values in times.items()}))


def run_side(src: Path, builds: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src.resolve()}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--builds", str(builds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    times: dict[str, list[float]] = json.loads(out.splitlines()[-1])
    return {unit: statistics.median(values) for unit, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--builds", type=int, default=200, help="builds timed per unit, run and side")
    parser.add_argument("--baseline-src", type=Path, help="src/ of another checkout, e.g. main's")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.builds)
        return
    sides = {"this": ROOT / "src"}
    if args.baseline_src is not None:
        if not (args.baseline_src / "opendepot" / "__init__.py").exists():
            sys.exit(f"bench/writes.py: --baseline-src {args.baseline_src} holds no opendepot package")
        sides["baseline"] = args.baseline_src
    medians: dict[str, dict[str, list[float]]] = {name: {unit: [] for unit in UNITS} for name in sides}
    names = list(sides)
    for i in range(args.runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            for unit, median in run_side(sides[name], args.builds).items():
                medians[name][unit].append(median)
        print(
            f"  run {i + 1}: "
            + "; ".join(f"{n} " + ", ".join(f"{u} {medians[n][u][-1]:.3f}" for u in UNITS) for n in names),
            flush=True,
        )
    print(f"\nbench/writes.py: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"each unit alone, ms: min / median / max of the runs' medians ({args.builds} builds a run)")
    for unit in UNITS:
        print(f"  {unit}")
        for name in names:
            values = medians[name][unit]
            print(f"    {name:<9} {min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}")
        if "baseline" in medians:
            this, base = medians["this"][unit], medians["baseline"][unit]
            ratios = [a / b for a, b in zip(this, base, strict=True)]
            ratio = statistics.median(this) / statistics.median(base)
            print(f"    this / baseline: {ratio:.2f}x (runs {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
