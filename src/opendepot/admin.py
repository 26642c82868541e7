"""Admin commands that act on the store directly (no server needed)."""

from __future__ import annotations

import argparse

from sqlalchemy.orm import Session

from opendepot.config import Config
from opendepot.organizations import queries as org_queries
from opendepot.organizations import service as organizations
from opendepot.store import Store
from opendepot.tokens import service as tokens


def run(args: argparse.Namespace, config: Config) -> int:
    store = Store.open(config.database_url, config.data_dir)
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
                _token, secret = tokens.create_organization_token(session, org.id, args.description)
                return secret

            print(store.call(create_token))
        return 0
    finally:
        store.dispose()
