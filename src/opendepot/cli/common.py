"""What the `opendepot` command groups share: how a remote command reaches a server (the SDK) and an admin
command the store, and how results are printed (a table, or `--json` for scripts; errors as one line)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from protobuf import Message
from rich.console import Console
from rich.table import Table

from opendepot.client import Depot, DepotError, core_v1
from opendepot.datadir import DataDir
from opendepot.errors import DomainError
from opendepot.server.config import Config, ConfigError, _default_data_dir, add_arguments, resolve
from opendepot.store import Store

Command = Callable[[argparse.Namespace], int]
RemoteHandler = Callable[[Depot, argparse.Namespace], "int | None"]
AdminHandler = Callable[[Store, argparse.Namespace], None]

HARDWARE = {
    f"{c}x{m}": h
    for h, (c, m) in {
        core_v1.Hardware.HARDWARE_16X32: (16, 32),
        core_v1.Hardware.HARDWARE_4X4: (4, 4),
        core_v1.Hardware.HARDWARE_8X8: (8, 8),
        core_v1.Hardware.HARDWARE_8X16: (8, 16),
        core_v1.Hardware.HARDWARE_32X64: (32, 64),
        core_v1.Hardware.HARDWARE_64X128: (64, 128),
        core_v1.Hardware.HARDWARE_96X192: (96, 192),
        core_v1.Hardware.HARDWARE_192X384: (192, 384),
    }.items()
}


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="the server (default: DEPOT_API_URL)")
    parser.add_argument("--token", help="an API token (default: DEPOT_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """An admin command works on the store directly: it takes the server's own settings."""
    add_arguments(parser)


def remote(handler: RemoteHandler) -> Command:
    """A command over the API (DEPOT_API_URL and DEPOT_TOKEN by default)."""

    def run(args: argparse.Namespace) -> int:
        try:
            with Depot(args.api_url, args.token) as depot:
                return handler(depot, args) or 0
        except DepotError as exc:
            print(f"opendepot: {exc.code.value}: {exc.message}", file=sys.stderr)
            if exc.code.value == "unauthenticated" and not (args.token or os.environ.get("DEPOT_TOKEN")):
                print(_token_hint(), file=sys.stderr)
            return 1

    return run


def _token_hint() -> str:
    hint = "opendepot: give a token with --token or DEPOT_TOKEN"
    data_dir = os.environ.get("OPENDEPOT_DATA_DIR") or _default_data_dir()
    admin_token = DataDir(Path(data_dir).expanduser()).admin_token
    if admin_token.exists():
        hint += f"; on this machine the server's admin token is in {admin_token}"
    return hint


def admin(handler: AdminHandler) -> Command:
    """A command on the store directly, with the server's configuration (flags, env, --config)."""

    def run(args: argparse.Namespace) -> int:
        config = configured(args)
        if config is None:
            return 2
        store = Store.open(config.store.database_url, config.data_dir)
        try:
            handler(store, args)
            return 0
        except DomainError as exc:
            print(f"opendepot: {exc.message}", file=sys.stderr)
            return 1
        finally:
            store.dispose()

    return run


def configured(args: argparse.Namespace) -> Config | None:
    try:
        return resolve(args)
    except ConfigError as exc:
        print(f"opendepot: {exc}", file=sys.stderr)
        return None


def out(
    args: argparse.Namespace, items: Iterable[Message[Any]] | Message[Any], table: Table | None = None
) -> None:
    if args.json:
        if isinstance(items, Message):
            print(items.to_json())
        else:
            print(json.dumps([json.loads(i.to_json()) for i in items], indent=2))
        return
    if table is not None:
        Console().print(table)
