"""The `opendepot` command: the server and the admin commands that work on the store directly."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opendepot import __version__
from opendepot.cli.remote import (
    add_client_arguments,
    add_commands,
    add_token_commands,
    add_usage_arguments,
    run,
)
from opendepot.errors import DomainError
from opendepot.server.config import ConfigError, add_arguments, resolve

from . import admin


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opendepot", description="A self-hosted Depot API server.")
    parser.add_argument("--version", action="version", version=f"opendepot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the API server",
        description="Run the Depot API server. Every option can also be set "
        "by its OPENDEPOT_* variable or in the --config file.",
    )
    add_arguments(serve)

    orgs = commands.add_parser("orgs", help="manage organizations (on the store directly)")
    org_commands = orgs.add_subparsers(dest="action", required=True)
    org_create = org_commands.add_parser("create", help="create an organization")
    org_create.add_argument("name")
    org_create.add_argument(
        "--with-token",
        action="store_true",
        help="also create an organization token and print its secret (once)",
    )
    add_arguments(org_create)
    org_list = org_commands.add_parser("list", help="list organizations")
    add_arguments(org_list)

    tokens = commands.add_parser("tokens", help="manage tokens")
    token_commands = tokens.add_subparsers(dest="action", required=True)
    token_create = token_commands.add_parser(
        "create",
        help="--org: an organization token (on the store directly); --project: a project token (through the "
        "API). Prints the secret once",
    )
    scope = token_create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--org", help="organization id or name")
    scope.add_argument("--project", help="project id")
    token_create.add_argument("--description")
    add_arguments(token_create)
    add_client_arguments(token_create)
    add_token_commands(token_commands)
    usage = commands.add_parser(
        "usage", help="usage figures for a period: over the API, or with --org on the store directly"
    )
    usage.add_argument("--org", help="admin form: this organization's figures, read from the store")
    usage.add_argument("--project", help="only this project")
    usage.add_argument("--from", dest="start", required=True, help="period start, ISO 8601 (inclusive)")
    usage.add_argument("--to", dest="end", required=True, help="period end, ISO 8601 (exclusive)")
    usage.add_argument("--csv", action="store_true", help="comma-separated values instead of a table")
    add_arguments(usage)
    add_usage_arguments(usage)
    login = commands.add_parser("login", help="`depot login` requests (on the store directly)")
    login_commands = login.add_subparsers(dest="action", required=True)
    approve = login_commands.add_parser(
        "approve", help="approve a waiting `depot login`: it receives a user token of the organization"
    )
    approve.add_argument("id", help="the id at the end of the approval URL the CLI printed")
    approve.add_argument("--org", default="default", help="organization id or name (default: default)")
    add_arguments(approve)
    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("projects", "builds", "trust-policies", "images", "build") or (
        args.command in ("tokens", "usage") and not getattr(args, "org", None)
    ):
        return run(args)
    try:
        config = resolve(args)
    except ConfigError as exc:
        print(f"opendepot: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            # Loaded only to serve: the server's dependencies would slow every remote command's start.
            from opendepot.server.serve import serve

            serve(config)
            return 0
        return admin.run(args, config)
    except DomainError as exc:
        print(f"opendepot: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
