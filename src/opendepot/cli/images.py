"""`opendepot images`: a project's saved images in the registry, over the API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from rich.table import Table

from opendepot.client import Depot, DepotError, core_v1, registry_v1
from opendepot.registry import seed

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
    sub = actions.add_parser(
        "seed",
        help="make a Debian base image from Debian's packages and push it to a project's registry",
        description="Builds a minimal Debian root filesystem with mmdebstrap from a Debian mirror (or takes "
        "--rootfs), and copies it with skopeo to REGISTRY/PROJECT/NAME:TAG, e.g. "
        "127.0.0.1:8081/<project>/debian:bookworm-slim, for Dockerfiles on machines that reach no public "
        "image registry.",
    )
    sub.add_argument("project_id")
    sub.add_argument("--registry", required=True, help="the project registry's host[:port]")
    sub.add_argument("--name", default="debian", help="repository name under the project (default: debian)")
    sub.add_argument("--tag", help="the tag (default: SUITE-slim)")
    sub.add_argument("--suite", default="bookworm", help="the Debian suite (default: bookworm)")
    sub.add_argument("--mirror", default=seed.DEFAULT_MIRROR, help="a Debian mirror (default: %(default)s)")
    sub.add_argument("--include", action="append", default=[], help="extra Debian packages to install")
    sub.add_argument("--rootfs", type=Path, help="an existing root filesystem tarball instead of mmdebstrap")
    sub.add_argument(
        "--insecure", action="store_true", help="the registry speaks plain HTTP (or an untrusted certificate)"
    )
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_images_seed))


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


def _images_seed(depot: Depot, args: argparse.Namespace) -> None:
    if not depot.token:
        raise DepotError(Code.UNAUTHENTICATED, "give --token or DEPOT_TOKEN (it is the registry password)")
    found = depot.core.v1.ProjectService.get_project(core_v1.GetProjectRequest(project_id=args.project_id))
    if found.project is None:
        raise DepotError(Code.NOT_FOUND, f"project {args.project_id} not found")
    if args.rootfs is not None and not args.rootfs.is_file():
        raise DepotError(Code.INVALID_ARGUMENT, f"--rootfs: {args.rootfs} is not a file")
    try:
        destination = seed.target(
            args.registry, found.project.project_id, args.name, args.tag or f"{args.suite}-slim"
        )
        digest = seed.seed(
            destination,
            depot.token,
            rootfs=args.rootfs,
            suite=args.suite,
            mirror=args.mirror,
            include=args.include,
            insecure=args.insecure,
        )
    except seed.SeedError as exc:
        raise DepotError(Code.FAILED_PRECONDITION, str(exc)) from exc
    reference = destination.reference
    print(json.dumps({"image": reference, "digest": digest}) if args.json else f"pushed {reference}@{digest}")
