"""Usage queries against a small and a large history: the same period (the last day, 100 builds) answered
from a store holding 100 builds and one holding 100,000 (3 steps and a lease each, spread over a year).
Prints the median time of GetUsage's figures for each and the ratio large / small.   target: <= 1.5

    .venv/bin/python bench/usage.py [--builds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from opendepot.auth import Principal, TokenKind  # noqa: E402
from opendepot.builds.models import Build, Lease, Step  # noqa: E402
from opendepot.organizations.models import Organization  # noqa: E402
from opendepot.projects.models import Project  # noqa: E402
from opendepot.store import Store  # noqa: E402
from opendepot.store.engine import sqlite_url  # noqa: E402
from opendepot.usage import service as usage  # noqa: E402

RECENT = 100


def populate(directory: Path, total: int, now: datetime) -> Store:
    store = Store.open(sqlite_url(directory), directory)
    builds, steps, leases = [], [], []
    for i in range(total):
        # The newest RECENT builds fall in the last day; the rest spread over the year before.
        age = (
            timedelta(minutes=i * 10 + 1)
            if i < RECENT
            else timedelta(days=1, seconds=(i * 311) % (364 * 86400))
        )
        created = now - age
        bid = f"b{i:09d}"
        builds.append(
            {
                "id": bid,
                "project_id": "p000000001",
                "organization_id": "o000000001",
                "status": "success",
                "options": [],
                "created_at": created,
                "started_at": created,
                "finished_at": created + timedelta(seconds=30),
            }
        )
        for n in range(3):
            steps.append(
                {
                    "build_id": bid,
                    "digest": f"sha256:{i}-{n}",
                    "name": f"[{n + 1}/3] RUN step {n}",
                    "started_at": created + timedelta(seconds=n),
                    "started_known": True,
                    "completed_at": created + timedelta(seconds=n + 5),
                    "cached": (i + n) % 2 == 0,
                    "project_id": "p000000001",
                    "saved_seconds": 5.0 if (i + n) % 2 == 0 else None,
                    "has_logs": False,
                }
            )
        leases.append(
            {
                "id": f"l{i:09d}",
                "build_id": bid,
                "project_id": "p000000001",
                "platform": "amd64",
                "hardware": "16x32",
                "acquired_at": created,
                "heartbeat_at": created,
                "served_at": created,
                "released_at": created + timedelta(seconds=31),
            }
        )
    with store.transaction() as s:
        s.add(Organization(id="o000000001", name="bench", created_at=now - timedelta(days=400)))
        s.add(
            Project(
                id="p000000001",
                organization_id="o000000001",
                name="bench",
                region_id="us-east-1",
                cache_keep_bytes=1 << 30,
                cache_keep_days=14,
                hardware="16x32",
                created_at=now - timedelta(days=400),
            )
        )
        s.flush()
        s.execute(insert(Build), builds)
        s.execute(insert(Step), steps)
        s.execute(insert(Lease), leases)
    return store


def measure(store: Store, now: datetime, runs: int) -> float:
    who = Principal(kind=TokenKind.ORGANIZATION, token_id="bench", organization_id="o000000001")
    period = usage.period(now - timedelta(days=1), now)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = store.read_now(lambda s: usage.organization_usage(s, who, period))
        times.append(time.perf_counter() - start)
        assert result.projects[0].build_count == RECENT, result.projects[0]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as small_dir, tempfile.TemporaryDirectory() as large_dir:
        small = populate(Path(small_dir), RECENT, now)
        large = populate(Path(large_dir), args.builds, now)
        small_time, large_time = measure(small, now, args.runs), measure(large, now, args.runs)
        small.dispose()
        large.dispose()
    ratio = large_time / small_time
    print(
        f"usage of the last day ({RECENT} builds), median of {args.runs}: {RECENT} builds stored "
        f"{small_time * 1000:.1f} ms, {args.builds} stored {large_time * 1000:.1f} ms, ratio {ratio:.2f}"
        f"  [target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}]"
    )


if __name__ == "__main__":
    main()
