"""`opendepot builds`: a project's builds, their steps and logs, over the API."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from opendepot.client import Depot, build_v1, core_build_v1

from .common import add_client_arguments, out, remote


def register(commands: Any) -> None:
    builds = commands.add_parser("builds", help="read builds, their steps and logs")
    actions = builds.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("list", help="a project's builds, newest first")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_builds_list))
    sub = actions.add_parser("get", help="one build")
    sub.add_argument("build_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_builds_get))
    sub = actions.add_parser("steps", help="a build's steps")
    sub.add_argument("project_id")
    sub.add_argument("build_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_builds_steps))
    sub = actions.add_parser("logs", help="a step's log lines")
    sub.add_argument("project_id")
    sub.add_argument("build_id")
    sub.add_argument("digest")
    sub.add_argument("--follow", action="store_true", help="keep printing new lines while the build runs")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_builds_logs))


def _build_table(builds: list[core_build_v1.Build]) -> Table:
    table = Table("ID", "Status", "Created", "Duration", "Cached steps")
    for b in builds:
        table.add_row(
            b.build_id,
            b.status.name.lower(),
            b.created_at.to_datetime().isoformat() if b.created_at else "",
            f"{b.build_duration_seconds} s" if b.build_duration_seconds is not None else "",
            f"{b.cached_steps or 0}/{b.total_steps or 0}",
        )
    return table


def _builds_list(depot: Depot, args: argparse.Namespace) -> None:
    builds = list(depot.iter_builds(args.project_id))
    out(args, builds, _build_table(builds))


def _builds_get(depot: Depot, args: argparse.Namespace) -> None:
    build = depot.core.v1.BuildService.get_build(core_build_v1.GetBuildRequest(build_id=args.build_id)).build
    assert build is not None
    out(args, build, _build_table([build]))


def _builds_steps(depot: Depot, args: argparse.Namespace) -> None:
    steps = list(depot.iter_build_steps(args.project_id, args.build_id))
    table = Table("Step", "Cache", "Digest", "Error")
    cached = build_v1.GetBuildStepsResponse.BuildStep.CacheState.CACHED
    for s in steps:
        table.add_row(s.name, "cached" if s.cache_state == cached else "", s.digest[:19], s.error or "")
    out(args, steps, table)


def _builds_logs(depot: Depot, args: argparse.Namespace) -> None:
    seen = 0
    while True:
        lines = list(depot.iter_step_logs(args.project_id, args.build_id, args.digest))
        for line in lines[seen:]:
            print(line.to_json() if args.json else line.message, flush=True)
        seen = len(lines)
        if not args.follow:
            return
        build = depot.core.v1.BuildService.get_build(
            core_build_v1.GetBuildRequest(build_id=args.build_id)
        ).build
        if build is None or build.status != core_build_v1.Build.Status.RUNNING:
            return
        time.sleep(1)
