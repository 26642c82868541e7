"""`opendepot projects`: a server's projects, over the API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from opendepot.client import Depot, core_v1

from .common import HARDWARE, add_client_arguments, out, remote


def register(commands: Any) -> None:
    projects = commands.add_parser("projects", help="manage projects on a server")
    actions = projects.add_subparsers(dest="action", required=True)
    handlers = {
        "list": _projects_list,
        "get": _projects_get,
        "delete": _projects_delete,
        "reset": _projects_reset,
    }
    for name, helptext in (
        ("list", "list projects"),
        ("get", "show a project"),
        ("delete", "delete a project"),
        ("reset", "reset a project's build cache"),
    ):
        sub = actions.add_parser(name, help=helptext)
        if name != "list":
            sub.add_argument("project_id")
        add_client_arguments(sub)
        sub.set_defaults(run=remote(handlers[name]))
    for name in ("create", "update"):
        sub = actions.add_parser(name, help=f"{name} a project")
        sub.add_argument("name" if name == "create" else "project_id")
        if name == "update":
            sub.add_argument("--name")
        sub.add_argument("--region")
        sub.add_argument("--cache-gb", type=int)
        sub.add_argument("--cache-days", type=int)
        sub.add_argument("--hardware", choices=sorted(HARDWARE))
        add_client_arguments(sub)
        sub.set_defaults(run=remote(_projects_create if name == "create" else _projects_update))


def _project_table(projects: list[core_v1.Project]) -> Table:
    table = Table("ID", "Name", "Region", "Cache", "Hardware", "Created")
    for p in projects:
        cache = p.cache_policy
        table.add_row(
            p.project_id,
            p.name,
            p.region_id,
            f"{cache.keep_gb} GB, {cache.keep_days} days" if cache else "",
            p.hardware.name.removeprefix("HARDWARE_").lower(),
            p.created_at.to_datetime().isoformat() if p.created_at else "",
        )
    return table


def _projects_list(depot: Depot, args: argparse.Namespace) -> None:
    projects = list(depot.iter_projects())
    out(args, projects, _project_table(projects))


def _projects_get(depot: Depot, args: argparse.Namespace) -> None:
    project = depot.core.v1.ProjectService.get_project(
        core_v1.GetProjectRequest(project_id=args.project_id)
    ).project
    assert project is not None
    out(args, project, _project_table([project]))


def _policy(args: argparse.Namespace) -> core_v1.CachePolicy | None:
    if args.cache_gb is None and args.cache_days is None:
        return None
    return core_v1.CachePolicy(
        keep_gb=args.cache_gb or 0, keep_days=args.cache_days if args.cache_days is not None else 14
    )


def _projects_create(depot: Depot, args: argparse.Namespace) -> None:
    request = core_v1.CreateProjectRequest(
        name=args.name,
        region_id=args.region or "",
        cache_policy=_policy(args),
        hardware=HARDWARE[args.hardware] if args.hardware else None,
    )
    project = depot.core.v1.ProjectService.create_project(request).project
    assert project is not None
    out(args, project, _project_table([project]))


def _projects_update(depot: Depot, args: argparse.Namespace) -> None:
    request = core_v1.UpdateProjectRequest(
        project_id=args.project_id,
        name=args.name,
        region_id=args.region,
        cache_policy=_policy(args),
        hardware=HARDWARE[args.hardware] if args.hardware else None,
    )
    project = depot.core.v1.ProjectService.update_project(request).project
    assert project is not None
    out(args, project, _project_table([project]))


def _projects_delete(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.delete_project(core_v1.DeleteProjectRequest(project_id=args.project_id))
    print(json.dumps({"deleted": args.project_id}) if args.json else f"deleted project {args.project_id}")


def _projects_reset(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.reset_project(core_v1.ResetProjectRequest(project_id=args.project_id))
    print(
        json.dumps({"reset": args.project_id})
        if args.json
        else f"reset the cache of project {args.project_id}"
    )
