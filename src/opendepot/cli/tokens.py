"""`opendepot tokens`: organization and user tokens on the store directly (`create --org [--expires-in]`,
`list --org`, `revoke --org`), project tokens over the API (`create --project`, `list`, `update`,
`delete`)."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

from rich.table import Table
from sqlalchemy.orm import Session

from opendepot.client import Depot, core_v1
from opendepot.clock import utcnow
from opendepot.errors import InvalidArgument
from opendepot.organizations import service as organizations
from opendepot.store import Store
from opendepot.tokens import service as tokens

from .common import add_client_arguments, add_store_arguments, admin, out, remote


def register(commands: Any) -> None:
    group = commands.add_parser("tokens", help="manage tokens")
    actions = group.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create",
        help="--org: an organization token (on the store directly); --project: a project token (through the "
        "API). Prints the secret once",
    )
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--org", help="organization id or name")
    scope.add_argument("--project", help="project id")
    create.add_argument("--description")
    create.add_argument(
        "--expires-in", help="with --org: the token expires after this long (e.g. 90d, 12h; default: never)"
    )
    add_store_arguments(create)
    add_client_arguments(create)
    create.set_defaults(run=_create)
    sub = actions.add_parser(
        "list",
        help="a project's tokens (through the API), or with --org an organization's organization and user "
        "tokens (on the store directly); never their secrets",
    )
    sub.add_argument("project_id", nargs="?")
    sub.add_argument("--org", help="admin form: organization id or name")
    add_store_arguments(sub)
    add_client_arguments(sub)
    sub.set_defaults(run=_list)
    sub = actions.add_parser(
        "revoke",
        help="revoke an organization or user token (on the store directly); it fails from the next request",
    )
    sub.add_argument("token_id")
    sub.add_argument("--org", required=True, help="organization id or name")
    add_store_arguments(sub)
    sub.set_defaults(run=admin(_revoke))
    sub = actions.add_parser("update", help="change a project token's description")
    sub.add_argument("token_id")
    sub.add_argument("--description", required=True)
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_tokens_update))
    sub = actions.add_parser("delete", help="delete (revoke) a project token")
    sub.add_argument("token_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_tokens_delete))


def _create(args: argparse.Namespace) -> int:
    return admin(_organization_token)(args) if args.org else remote(_tokens_create)(args)


def _organization_token(store: Store, args: argparse.Namespace) -> None:
    expires_at = utcnow() + parse_duration(args.expires_in) if args.expires_in else None

    def create_token(session: Session) -> str:
        org = organizations.find_organization(session, args.org)
        description = args.description or "organization token"
        _token, secret = tokens.create_organization_token(session, org.id, description, expires_at)
        return secret

    print(store.call(create_token))


def _list(args: argparse.Namespace) -> int:
    if args.org:
        return admin(_organization_tokens)(args)
    if not args.project_id:
        raise SystemExit("opendepot tokens list: give a project id, or --org for the admin form")
    return remote(_tokens_list)(args)


def _organization_tokens(store: Store, args: argparse.Namespace) -> None:
    def list_tokens(session: Session) -> list[str]:
        org = organizations.find_organization(session, args.org)
        return [
            "\t".join(
                (
                    t.id,
                    t.kind,
                    t.description,
                    t.created_at.isoformat(timespec="seconds"),
                    t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never",
                )
            )
            for t in tokens.list_organization_tokens(session, org.id)
        ]

    for line in store.call(list_tokens):
        print(line)


def _revoke(store: Store, args: argparse.Namespace) -> None:
    def revoke(session: Session) -> str:
        org = organizations.find_organization(session, args.org)
        token = tokens.revoke_organization_token(session, org.id, args.token_id)
        return f"revoked {token.kind} token {token.id} ({token.description})"

    print(store.call(revoke))


DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`: how long a token lasts."""
    number, unit = text[:-1], text[-1:]
    # ASCII digits (isdigit() alone takes "²", which int() refuses), and few enough for a timedelta.
    if unit not in DURATION_UNITS or not (number.isascii() and number.isdigit() and len(number) <= 6):
        raise InvalidArgument("--expires-in", "a positive number of minutes, hours or days: 30m, 12h, 90d")
    if int(number) <= 0:
        raise InvalidArgument("--expires-in", "a positive number of minutes, hours or days: 30m, 12h, 90d")
    return timedelta(seconds=int(number) * DURATION_UNITS[unit])


def _tokens_create(depot: Depot, args: argparse.Namespace) -> None:
    created = depot.core.v1.ProjectService.create_token(
        core_v1.CreateTokenRequest(project_id=args.project, description=args.description or "project token")
    )
    print(created.to_json() if args.json else created.secret)


def _tokens_list(depot: Depot, args: argparse.Namespace) -> None:
    tokens = list(
        depot.core.v1.ProjectService.list_tokens(core_v1.ListTokensRequest(project_id=args.project_id)).tokens
    )
    table = Table("ID", "Description")
    for t in tokens:
        table.add_row(t.token_id, t.description)
    out(args, tokens, table)


def _tokens_update(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.update_token(
        core_v1.UpdateTokenRequest(token_id=args.token_id, description=args.description)
    )
    print(json.dumps({"updated": args.token_id}) if args.json else f"updated token {args.token_id}")


def _tokens_delete(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.delete_token(core_v1.DeleteTokenRequest(token_id=args.token_id))
    print(json.dumps({"deleted": args.token_id}) if args.json else f"deleted token {args.token_id}")
