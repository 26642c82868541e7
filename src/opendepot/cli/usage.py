"""`opendepot usage`: usage figures for a period, over the API, or with --org from the store directly."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import UTC, datetime
from typing import Any

from connectrpc.code import Code
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp
from rich.table import Table
from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.client import Depot, DepotError, usage_v1
from opendepot.clock import as_utc
from opendepot.errors import InvalidArgument
from opendepot.organizations import service as organizations
from opendepot.store import Store
from opendepot.usage import service as usage

from .common import add_store_arguments, admin, out, remote


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "usage", help="usage figures for a period: over the API, or with --org on the store directly"
    )
    parser.add_argument("--org", help="admin form: this organization's figures, read from the store")
    parser.add_argument("--project", help="only this project")
    parser.add_argument("--from", dest="start", required=True, help="period start, ISO 8601 (inclusive)")
    parser.add_argument("--to", dest="end", required=True, help="period end, ISO 8601 (exclusive)")
    parser.add_argument("--csv", action="store_true", help="comma-separated values instead of a table")
    add_store_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--api-url", help="the server (default: DEPOT_API_URL)")
    parser.add_argument("--token", help="an API token (default: DEPOT_TOKEN)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    return admin(print_usage)(args) if args.org else remote(_usage)(args)


def _when(value: str) -> Timestamp:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DepotError(
            Code.INVALID_ARGUMENT, f"--from/--to: {value!r} is not an ISO 8601 date or time"
        ) from exc
    return Timestamp.from_datetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _usage(depot: Depot, args: argparse.Namespace) -> None:
    start, end = _when(args.start), _when(args.end)
    service = depot.core.v1.UsageService
    if args.project:
        one = service.get_project_usage(
            usage_v1.GetProjectUsageRequest(project_id=args.project, start_at=start, end_at=end)
        ).usage
        rows = [one] if one is not None else []
    else:
        rows = list(depot.iter_project_usage(start, end))
    table = Table("Project", "Builds", "Build seconds", "Cache GB")
    for r in rows:
        table.add_row(
            r.project_id, str(r.build_count), str(r.build_duration_seconds), str(r.layer_cache_size_gb)
        )
    out(args, rows, table)


def print_usage(store: Store, args: argparse.Namespace) -> None:
    """The figures of usage/service.py for an organization (or one project), as a table or CSV."""
    try:
        start, end = (as_utc(datetime.fromisoformat(v)) for v in (args.start, args.end))
    except ValueError as exc:
        raise InvalidArgument("--from/--to", "must be ISO 8601 dates or times") from exc
    span = usage.period(start, end)

    def figures(session: Session) -> list[usage.ProjectFigures]:
        org = organizations.find_organization(session, args.org)
        # The admin acts as the organization itself; "admin" is an id, not a secret.
        admin = Principal(kind=TokenKind.ORGANIZATION, token_id="admin", organization_id=org.id)  # noqa: S106
        if args.project:
            return [usage.project_usage(session, admin, args.project, span)]
        return usage.organization_usage(session, admin, span).projects

    header = ["project_id", "name", "builds", "build_seconds", "cache_gb", "minutes_saved", "minutes_billed"]
    rows = [
        [
            f.project_id,
            f.project_name,
            f.build_count,
            f.build_duration_seconds,
            f.layer_cache_size_gb,
            f"{f.minutes_saved:.2f}",
            f"{f.minutes_billed:.2f}",
        ]
        for f in store.call(figures)
    ]
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
        return
    table: list[list[str]] = [header, *([str(x) for x in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
