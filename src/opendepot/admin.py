"""Admin commands that act on the store directly (no server needed)."""

from __future__ import annotations

import argparse

from opendepot.config import Config
from opendepot.organizations import service as organizations
from opendepot.server import open_store
from opendepot.tokens import service as tokens


def run(args: argparse.Namespace, config: Config) -> int:
    store = open_store(config)
    try:
        if args.command == "orgs" and args.action == "create":
            org = store.call(lambda s: organizations.create_organization(s, args.name))
            print(f"{org.id}\t{org.name}")
        elif args.command == "orgs" and args.action == "list":
            from opendepot.organizations import queries

            for org in store.call(lambda s: queries.list_all(s)):
                print(f"{org.id}\t{org.name}")
        elif args.command == "tokens" and args.action == "create":

            def create(session: object) -> str:
                from sqlalchemy.orm import Session

                assert isinstance(session, Session)
                org = organizations.find_organization(session, args.org)
                _token, secret = tokens.create_organization_token(session, org.id, args.description)
                return secret

            print(store.call(create))
        return 0
    finally:
        store.dispose()
