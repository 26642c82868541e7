"""First start on an empty store: create the `default` organization and its admin token."""

from __future__ import annotations

import sys

from opendepot.datadir import DataDir
from opendepot.files import write_private
from opendepot.organizations import service as organizations
from opendepot.store import Store
from opendepot.tokens import service as tokens


def bootstrap(store: Store, paths: DataDir) -> bool:
    """Returns True when it created the organization. The token file is written inside the transaction:
    if writing fails, nothing is created and the next start tries again."""
    path = paths.admin_token
    with store.transaction() as session:
        if not organizations.is_empty(session):
            return False
        org = organizations.create_organization(session, "default")
        _token, secret = tokens.create_organization_token(session, org.id, "admin token (bootstrap)")
        write_private(path, secret + "\n")
    print(f"opendepot: created organization 'default'; its admin token is in {path}", file=sys.stderr)
    return True
