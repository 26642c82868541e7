"""Admin commands that act on the store directly (no server needed)."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import datetime

from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.clock import as_utc
from opendepot.errors import InvalidArgument
from opendepot.logins import service as logins
from opendepot.organizations import queries as org_queries
from opendepot.organizations import service as organizations
from opendepot.server.config import Config
from opendepot.store import Store
from opendepot.tokens import service as tokens
from opendepot.usage import service as usage


def run(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.store.database_url, config.data_dir)
    try:
        if args.command == "orgs" and args.action == "create":

            def create_org(session: Session) -> str:
                org = organizations.create_organization(session, args.name)
                line = f"{org.id}\t{org.name}"
                if args.with_token:
                    _token, secret = tokens.create_organization_token(session, org.id, "organization token")
                    line += f"\t{secret}"
                return line

            print(store.call(create_org))
        elif args.command == "orgs" and args.action == "list":
            for org in store.call(org_queries.list_all):
                print(f"{org.id}\t{org.name}")
        elif args.command == "tokens" and args.action == "create":

            def create_token(session: Session) -> str:
                org = organizations.find_organization(session, args.org)
                description = args.description or "organization token"
                _token, secret = tokens.create_organization_token(session, org.id, description)
                return secret

            print(store.call(create_token))
        elif args.command == "login" and args.action == "approve":

            def approve(session: Session) -> str:
                org = organizations.find_organization(session, args.org)
                logins.approve(session, args.id, org.id, "admin")
                return f"approved: the waiting depot login receives a user token of {org.name} ({org.id})"

            print(store.call(approve))
        elif args.command == "usage":
            print_usage(store, args)
        return 0
    finally:
        store.dispose()


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
