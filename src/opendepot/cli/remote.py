"""User-facing `opendepot` commands over the Python SDK (any Depot-compatible server, DEPOT_API_URL and
DEPOT_TOKEN by default): human tables, or `--json` for scripts; errors as one line, never a stack trace."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from connectrpc.code import Code
from protobuf import Message, Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp
from rich.console import Console
from rich.table import Table

from opendepot.cli.build import run_build
from opendepot.client import Depot, DepotError, build_v1, core_build_v1, core_v1, registry_v1, usage_v1

GIB = 1 << 30
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


def add_commands(commands: Any) -> None:
    projects = commands.add_parser("projects", help="manage projects on a server")
    actions = projects.add_subparsers(dest="action", required=True)
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

    add_trust_policy_commands(commands)
    builds = commands.add_parser("builds", help="read builds, their steps and logs")
    actions = builds.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("list", help="a project's builds, newest first")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub = actions.add_parser("get", help="one build")
    sub.add_argument("build_id")
    add_client_arguments(sub)
    sub = actions.add_parser("steps", help="a build's steps")
    sub.add_argument("project_id")
    sub.add_argument("build_id")
    add_client_arguments(sub)
    sub = actions.add_parser("logs", help="a step's log lines")
    sub.add_argument("project_id")
    sub.add_argument("build_id")
    sub.add_argument("digest")
    sub.add_argument("--follow", action="store_true", help="keep printing new lines while the build runs")
    add_client_arguments(sub)
    add_image_and_build_commands(commands)


def add_image_and_build_commands(commands: Any) -> None:
    images = commands.add_parser("images", help="a project's saved images in the registry")
    actions = images.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("list", help="tags, digests and sizes, newest first")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub = actions.add_parser("delete", help="delete tags (a tag, a full reference or sha256-<hex>)")
    sub.add_argument("project_id")
    sub.add_argument("tags", nargs="+")
    add_client_arguments(sub)

    build = commands.add_parser(
        "build",
        help="build a Dockerfile through the server with buildctl (no depot CLI needed)",
        description="Creates a build on the server, drives its BuildKit with buildctl over the issued "
        "certificate, shows BuildKit's progress, and exits with buildctl's status.",
    )
    build.add_argument("context", help="the build context directory")
    build.add_argument("--project", help="project id (default: the token's own project)")
    build.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    build.add_argument("--target", help="the stage to build")
    build.add_argument("--build-arg", action="append", metavar="NAME=VALUE")
    build.add_argument("-t", "--tag", action="append", help="image name, kept with the build's options")
    build.add_argument("--save", action="store_true", help="push the image to the project's registry")
    build.add_argument("--save-tag", action="append", help="an extra tag for --save (implies it)")
    build.add_argument("--output", action="append", help="a buildctl --output, e.g. type=local,dest=out")
    add_client_arguments(build)


def add_usage_arguments(usage: argparse.ArgumentParser) -> None:
    """`opendepot usage` over the API (the admin form, with --org, reads the store)."""
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    usage.add_argument("--api-url", help="the server (default: DEPOT_API_URL)")
    usage.add_argument("--token", help="an API token (default: DEPOT_TOKEN)")


def add_token_commands(actions: Any) -> None:
    """Project tokens through the API (`tokens create --project` sits in cli.py beside the admin --org)."""
    sub = actions.add_parser("list", help="a project's tokens (never their secrets)")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub = actions.add_parser("update", help="change a project token's description")
    sub.add_argument("token_id")
    sub.add_argument("--description", required=True)
    add_client_arguments(sub)
    sub = actions.add_parser("delete", help="delete (revoke) a project token")
    sub.add_argument("token_id")
    add_client_arguments(sub)


def add_trust_policy_commands(commands: Any) -> None:
    policies = commands.add_parser("trust-policies", help="which CI identities may build in a project")
    actions = policies.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("list", help="a project's trust policies")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub = actions.add_parser("add", help="trust one CI identity")
    sub.add_argument("project_id")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--github", metavar="OWNER/REPO")
    which.add_argument("--buildkite", metavar="ORG/PIPELINE")
    which.add_argument("--circleci", metavar="ORG_UUID/PROJECT_UUID")
    which.add_argument("--gitlab", metavar="GROUP/PROJECT", help="opendepot extension: a GitLab project path")
    add_client_arguments(sub)
    sub = actions.add_parser("remove", help="remove a trust policy")
    sub.add_argument("project_id")
    sub.add_argument("trust_policy_id")
    add_client_arguments(sub)


def run(args: argparse.Namespace) -> int:
    try:
        with Depot(args.api_url, args.token) as depot:
            if args.command == "build":
                return run_build(depot, args)
            handler: Callable[[Depot, argparse.Namespace], None] = HANDLERS[
                (args.command, getattr(args, "action", ""))
            ]
            handler(depot, args)
        return 0
    except DepotError as exc:
        print(f"opendepot: {exc.code.value}: {exc.message}", file=sys.stderr)
        return 1


def _out(
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
    _out(args, projects, _project_table(projects))


def _projects_get(depot: Depot, args: argparse.Namespace) -> None:
    project = depot.core.v1.ProjectService.get_project(
        core_v1.GetProjectRequest(project_id=args.project_id)
    ).project
    assert project is not None
    _out(args, project, _project_table([project]))


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
    _out(args, project, _project_table([project]))


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
    _out(args, project, _project_table([project]))


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


def _build_table(builds: list[core_build_v1.Build]) -> Table:
    table = Table("ID", "Status", "Created", "Duration", "Cached steps")
    for b in builds:
        table.add_row(
            b.build_id,
            b.status.name.lower(),
            b.created_at.to_datetime().isoformat() if b.created_at else "",
            f"{b.build_duration_seconds} s" if b.build_duration_seconds is not None else "",
            f"{b.cached_steps or 0}/{b.total_steps or 0}",
        )
    return table


def _builds_list(depot: Depot, args: argparse.Namespace) -> None:
    builds = list(depot.iter_builds(args.project_id))
    _out(args, builds, _build_table(builds))


def _builds_get(depot: Depot, args: argparse.Namespace) -> None:
    build = depot.core.v1.BuildService.get_build(core_build_v1.GetBuildRequest(build_id=args.build_id)).build
    assert build is not None
    _out(args, build, _build_table([build]))


def _builds_steps(depot: Depot, args: argparse.Namespace) -> None:
    steps = list(depot.iter_build_steps(args.project_id, args.build_id))
    table = Table("Step", "Cache", "Digest", "Error")
    cached = build_v1.GetBuildStepsResponse.BuildStep.CacheState.CACHED
    for s in steps:
        table.add_row(s.name, "cached" if s.cache_state == cached else "", s.digest[:19], s.error or "")
    _out(args, steps, table)


def _builds_logs(depot: Depot, args: argparse.Namespace) -> None:
    seen = 0
    while True:
        lines = list(depot.iter_step_logs(args.project_id, args.build_id, args.digest))
        for line in lines[seen:]:
            print(line.to_json() if args.json else line.message, flush=True)
        seen = len(lines)
        if not args.follow:
            return
        build = depot.core.v1.BuildService.get_build(
            core_build_v1.GetBuildRequest(build_id=args.build_id)
        ).build
        if build is None or build.status != core_build_v1.Build.Status.RUNNING:
            return
        time.sleep(1)


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
    _out(args, tokens, table)


def _tokens_update(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.update_token(
        core_v1.UpdateTokenRequest(token_id=args.token_id, description=args.description)
    )
    print(json.dumps({"updated": args.token_id}) if args.json else f"updated token {args.token_id}")


def _tokens_delete(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.delete_token(core_v1.DeleteTokenRequest(token_id=args.token_id))
    print(json.dumps({"deleted": args.token_id}) if args.json else f"deleted token {args.token_id}")


def _policy_fields(policy: core_v1.TrustPolicy) -> tuple[str, str]:
    value = policy.provider.value if policy.provider is not None else None
    if isinstance(value, core_v1.TrustPolicy.GitHub):
        return "github", f"{value.repository_owner}/{value.repository.rpartition('/')[2]}"
    if isinstance(value, core_v1.TrustPolicy.Buildkite):
        return "buildkite", f"{value.organization_slug}/{value.pipeline_slug}"
    if isinstance(value, core_v1.TrustPolicy.CircleCI):
        return "circleci", f"{value.organization_uuid}/{value.project_uuid}"
    if isinstance(value, core_v1.TrustPolicy.GitLab):
        return "gitlab", value.project_path
    return "", ""


def _policies_list(depot: Depot, args: argparse.Namespace) -> None:
    policies = list(
        depot.core.v1.ProjectService.list_trust_policies(
            core_v1.ListTrustPoliciesRequest(project_id=args.project_id)
        ).trust_policies
    )
    table = Table("ID", "Provider", "Identity")
    for p in policies:
        table.add_row(p.trust_policy_id, *_policy_fields(p))
    _out(args, policies, table)


def _policies_add(depot: Depot, args: argparse.Namespace) -> None:
    value = args.github or args.buildkite or args.circleci or args.gitlab
    first, _, second = value.partition("/")
    provider: Any
    if args.gitlab:
        namespace = value.rpartition("/")[0]
        provider = Oneof("gitlab", core_v1.TrustPolicy.GitLab(namespace_path=namespace, project_path=value))
    elif args.github:
        provider = Oneof("github", core_v1.TrustPolicy.GitHub(repository_owner=first, repository=second))
    elif args.buildkite:
        provider = Oneof(
            "buildkite", core_v1.TrustPolicy.Buildkite(organization_slug=first, pipeline_slug=second)
        )
    else:
        provider = Oneof(
            "circleci", core_v1.TrustPolicy.CircleCI(organization_uuid=first, project_uuid=second)
        )
    added = depot.core.v1.ProjectService.add_trust_policy(
        core_v1.AddTrustPolicyRequest(project_id=args.project_id, provider=provider)
    ).trust_policy
    assert added is not None
    print(added.to_json() if args.json else added.trust_policy_id)


def _policies_remove(depot: Depot, args: argparse.Namespace) -> None:
    depot.core.v1.ProjectService.remove_trust_policy(
        core_v1.RemoveTrustPolicyRequest(project_id=args.project_id, trust_policy_id=args.trust_policy_id)
    )
    print(json.dumps({"removed": args.trust_policy_id}) if args.json else f"removed {args.trust_policy_id}")


def _images_list(depot: Depot, args: argparse.Namespace) -> None:
    images = list(depot.iter_images(args.project_id))
    table = Table("Tag", "Digest", "Size", "Pushed")
    for i in images:
        pushed = i.pushed_at.to_datetime().isoformat() if i.pushed_at else ""
        table.add_row(i.tag, i.digest, f"{i.size_bytes / 1e6:.1f} MB", pushed)
    _out(args, images, table)


def _images_delete(depot: Depot, args: argparse.Namespace) -> None:
    depot.build.v1.RegistryService.delete_image(
        registry_v1.DeleteImageRequest(project_id=args.project_id, image_tags=list(args.tags))
    )
    print(json.dumps({"deleted": args.tags}) if args.json else f"deleted {', '.join(args.tags)}")


def _when(value: str) -> Timestamp:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise DepotError(
            Code.INVALID_ARGUMENT, f"--from/--to: {value!r} is not an ISO 8601 date or time"
        ) from exc
    return Timestamp.from_datetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _usage(depot: Depot, args: argparse.Namespace) -> None:
    start, end = _when(args.start), _when(args.end)
    service = depot.core.v1.UsageService
    if args.project:
        one = service.get_project_usage(
            usage_v1.GetProjectUsageRequest(project_id=args.project, start_at=start, end_at=end)
        ).usage
        rows = [one] if one is not None else []
    else:
        rows = list(depot.iter_project_usage(start, end))
    table = Table("Project", "Builds", "Build seconds", "Cache GB")
    for r in rows:
        table.add_row(
            r.project_id, str(r.build_count), str(r.build_duration_seconds), str(r.layer_cache_size_gb)
        )
    _out(args, rows, table)


HANDLERS: dict[tuple[str, str], Callable[[Depot, argparse.Namespace], None]] = {
    ("images", "list"): _images_list,
    ("images", "delete"): _images_delete,
    ("usage", ""): _usage,
    ("tokens", "create"): _tokens_create,
    ("tokens", "list"): _tokens_list,
    ("tokens", "update"): _tokens_update,
    ("tokens", "delete"): _tokens_delete,
    ("trust-policies", "list"): _policies_list,
    ("trust-policies", "add"): _policies_add,
    ("trust-policies", "remove"): _policies_remove,
    ("projects", "list"): _projects_list,
    ("projects", "get"): _projects_get,
    ("projects", "create"): _projects_create,
    ("projects", "update"): _projects_update,
    ("projects", "delete"): _projects_delete,
    ("projects", "reset"): _projects_reset,
    ("builds", "list"): _builds_list,
    ("builds", "get"): _builds_get,
    ("builds", "steps"): _builds_steps,
    ("builds", "logs"): _builds_logs,
}
