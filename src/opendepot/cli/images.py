"""`opendepot images`: a project's saved images in the registry, over the API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from opendepot.client import Depot, registry_v1

from .common import add_client_arguments, out, remote


def register(commands: Any) -> None:
    images = commands.add_parser("images", help="a project's saved images in the registry")
    actions = images.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("list", help="tags, digests and sizes, newest first")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_images_list))
    sub = actions.add_parser("delete", help="delete tags (a tag, a full reference or sha256-<hex>)")
    sub.add_argument("project_id")
    sub.add_argument("tags", nargs="+")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_images_delete))


def _images_list(depot: Depot, args: argparse.Namespace) -> None:
    images = list(depot.iter_images(args.project_id))
    table = Table("Tag", "Digest", "Size", "Pushed")
    for i in images:
        pushed = i.pushed_at.to_datetime().isoformat() if i.pushed_at else ""
        table.add_row(i.tag, i.digest, f"{i.size_bytes / 1e6:.1f} MB", pushed)
    out(args, images, table)


def _images_delete(depot: Depot, args: argparse.Namespace) -> None:
    depot.build.v1.RegistryService.delete_image(
        registry_v1.DeleteImageRequest(project_id=args.project_id, image_tags=list(args.tags))
    )
    print(json.dumps({"deleted": args.tags}) if args.json else f"deleted {', '.join(args.tags)}")
