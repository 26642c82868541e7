"""`opendepot trust-policies`: which CI identities may build in a project, over the API."""

from __future__ import annotations

import argparse
import json
from typing import Any

from protobuf import Oneof
from rich.table import Table

from opendepot.client import Depot, core_v1

from .common import add_client_arguments, out, remote


def register(commands: Any) -> None:
    policies = commands.add_parser("trust-policies", help="which CI identities may build in a project")
    actions = policies.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("list", help="a project's trust policies")
    sub.add_argument("project_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_policies_list))
    sub = actions.add_parser("add", help="trust one CI identity")
    sub.add_argument("project_id")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--github", metavar="OWNER/REPO")
    which.add_argument("--buildkite", metavar="ORG/PIPELINE")
    which.add_argument("--circleci", metavar="ORG_UUID/PROJECT_UUID")
    which.add_argument("--gitlab", metavar="GROUP/PROJECT", help="opendepot extension: a GitLab project path")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_policies_add))
    sub = actions.add_parser("remove", help="remove a trust policy")
    sub.add_argument("project_id")
    sub.add_argument("trust_policy_id")
    add_client_arguments(sub)
    sub.set_defaults(run=remote(_policies_remove))


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
    out(args, policies, table)


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
