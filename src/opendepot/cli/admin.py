"""Admin commands on the store directly (no server needed): organizations and `depot login` approvals.
They take the server's own settings (--data-dir, --database-url, --config, OPENDEPOT_*)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.orm import Session

from opendepot.errors import NotFound
from opendepot.logins import service as logins
from opendepot.organizations import queries as org_queries
from opendepot.organizations import service as organizations
from opendepot.projects import queries as project_queries
from opendepot.projects import service as projects
from opendepot.store import Store
from opendepot.tokens import service as tokens

from .common import add_store_arguments, admin


def register_orgs(commands: Any) -> None:
    orgs = commands.add_parser("orgs", help="manage organizations (on the store directly)")
    org_commands = orgs.add_subparsers(dest="action", required=True)
    org_create = org_commands.add_parser("create", help="create an organization")
    org_create.add_argument("name")
    org_create.add_argument(
        "--with-token",
        action="store_true",
        help="also create an organization token and print its secret (once)",
    )
    add_store_arguments(org_create)
    org_create.set_defaults(run=admin(_create_org))
    org_list = org_commands.add_parser("list", help="list organizations")
    add_store_arguments(org_list)
    org_list.set_defaults(run=admin(_list_orgs))


def register_login(commands: Any) -> None:
    login = commands.add_parser("login", help="`depot login` requests (on the store directly)")
    login_commands = login.add_subparsers(dest="action", required=True)
    approve = login_commands.add_parser(
        "approve", help="approve a waiting `depot login`: it receives a user token of the organization"
    )
    approve.add_argument("id", help="the id at the end of the approval URL the CLI printed")
    approve.add_argument("--org", default="default", help="organization id or name (default: default)")
    add_store_arguments(approve)
    approve.set_defaults(run=admin(_approve_login))


def register_entitlements(commands: Any) -> None:
    entitlements = commands.add_parser(
        "entitlements",
        help="BuildKit entitlements a project's builders may grant (on the store directly; the operator's "
        "decision: they loosen the builder sandbox, which still holds)",
    )
    entitlements.add_argument("project_id")
    entitlements.add_argument(
        "--allow",
        action="append",
        choices=projects.ENTITLEMENTS,
        help="allow this entitlement (repeatable); takes effect when the project's builders next start",
    )
    entitlements.add_argument("--none", action="store_true", help="allow none again (the default)")
    add_store_arguments(entitlements)
    entitlements.set_defaults(run=admin(_entitlements))


def _entitlements(store: Store, args: argparse.Namespace) -> None:
    if args.allow or args.none:
        allowed = args.allow or []
        store.call(lambda s: projects.set_entitlements(s, args.project_id, allowed))

    def allowed_now(session: Session) -> str:
        project = project_queries.get(session, args.project_id)
        if project is None:
            raise NotFound(f"project {args.project_id} not found")
        return ",".join(projects.entitlements_of(project)) or "none"

    print(f"{args.project_id}\t{store.call(allowed_now)}")


def _create_org(store: Store, args: argparse.Namespace) -> None:
    def create_org(session: Session) -> str:
        org = organizations.create_organization(session, args.name)
        line = f"{org.id}\t{org.name}"
        if args.with_token:
            _token, secret = tokens.create_organization_token(session, org.id, "organization token")
            line += f"\t{secret}"
        return line

    print(store.call(create_org))


def _list_orgs(store: Store, args: argparse.Namespace) -> None:
    for org in store.call(org_queries.list_all):
        print(f"{org.id}\t{org.name}")


def _approve_login(store: Store, args: argparse.Namespace) -> None:
    def approve(session: Session) -> str:
        org = organizations.find_organization(session, args.org)
        logins.approve(session, args.id, org.id, "admin")
        return f"approved: the waiting depot login receives a user token of {org.name} ({org.id})"

    print(store.call(approve))
