"""The `opendepot` command: the server (`serve`), admin commands on the store, and commands over the API.
One module per command group; each registers its parser and sets the function that runs it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opendepot import __version__
from opendepot.errors import DomainError

from . import admin, build, builds, images, projects, tokens, trust_policies, usage
from .common import add_store_arguments, configured


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
    add_store_arguments(serve)
    serve.set_defaults(run=_serve)
    admin.register_orgs(commands)
    tokens.register(commands)
    usage.register(commands)
    admin.register_login(commands)
    admin.register_entitlements(commands)
    projects.register(commands)
    trust_policies.register(commands)
    builds.register(commands)
    images.register(commands)
    build.register(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    config = configured(args)
    if config is None:
        return 2
    # Loaded only to serve: the server's dependencies would slow every other command's start.
    from opendepot.server.serve import serve

    try:
        serve(config)
    except DomainError as exc:
        print(f"opendepot: {exc.message}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except KeyboardInterrupt:
        return 130
