"""The authorization matrix: every RPC against every kind of caller, and what each cell must answer.

The same data drives tests/reliability/test_authorization_matrix.py and the table in README.md
(`python -m tests.reliability.authz_matrix` prints it; a test checks that the README carries it).

A cell is one of:
- `allow`: the call gets past authentication and authorization (it may still fail on its own terms:
  a finished build is `failed_precondition`, depot push is `unimplemented`, ...);
- `deny`: `permission_denied` (or `not_found` where existence itself is hidden);
- `unauth`: `unauthenticated`.
The targets are the caller's own: "project" is a token of the target project, "build" the token of the target
build, "other project"/"other build" a token of a sibling in the same organization, "user" a `depot login`
token of the organization, "oidc" a CI identity that the target project's trust policy matches."""

from __future__ import annotations

CREDENTIALS = [
    "none",
    "junk",
    "org",
    "other org",
    "project",
    "other project",
    "build",
    "other build",
    "pull",
    "user",
    "oidc",
]

A, D, U = "allow", "deny", "unauth"


def row(*cells: str) -> tuple[str, ...]:
    assert len(cells) == len(CREDENTIALS)
    return cells


# Shapes shared by many RPCs.
PUBLIC = row(A, A, A, A, A, A, A, A, A, A, A)
# Managing a project (and its tokens and trust policies): the organization only.
MANAGE = row(U, U, A, D, D, D, D, D, D, A, D)
# Reading and building in a project: the organization, the project's tokens, CI identities it trusts.
PROJECT = row(U, U, A, D, A, D, D, D, D, A, A)
# A build's own calls: as PROJECT, and the build's own token.
BUILD = row(U, U, A, D, A, D, A, D, D, A, A)
# Listing what the caller can see (an OIDC identity sees the projects that trust it, an empty org list).
LISTING = row(U, U, A, A, A, A, D, D, D, A, A)
# A pull token for a build or a project.
PULL = row(U, U, A, D, A, D, A, D, D, A, A)
# Authenticated, then `unimplemented` (depot push needs Depot's blob service).
UNIMPLEMENTED = row(U, U, A, A, A, A, A, A, A, A, A)

EXPECTED: dict[str, tuple[str, ...]] = {
    "depot.cli.v1beta1.LoginService/StartLogin": PUBLIC,
    "depot.cli.v1beta1.LoginService/FinishLogin": PUBLIC,
    "depot.core.v1.OrganizationService/ListOrganizations": row(U, U, A, A, A, A, D, D, D, A, A),
    "depot.core.v1.ProjectService/ListProjects": LISTING,
    "depot.cli.v1beta1.ProjectsService/ListProjects": LISTING,
    "depot.core.v1.UsageService/GetUsage": LISTING,
    "depot.core.v1.UsageService/ListProjectUsage": LISTING,
    # In the caller's own organization (the other organization creates in its own).
    "depot.core.v1.ProjectService/CreateProject": row(U, U, A, A, D, D, D, D, D, A, D),
    "depot.core.v1.ProjectService/GetProject": PROJECT,
    "depot.core.v1.ProjectService/UpdateProject": MANAGE,
    "depot.core.v1.ProjectService/DeleteProject": MANAGE,
    "depot.core.v1.ProjectService/ResetProject": PROJECT,
    "depot.cli.v1beta1.ProjectsService/ResetProjectCache": PROJECT,
    "depot.core.v1.ProjectService/ListTrustPolicies": MANAGE,
    "depot.core.v1.ProjectService/AddTrustPolicy": MANAGE,
    "depot.core.v1.ProjectService/RemoveTrustPolicy": MANAGE,
    "depot.core.v1.ProjectService/ListTokens": MANAGE,
    "depot.core.v1.ProjectService/CreateToken": MANAGE,
    "depot.core.v1.ProjectService/UpdateToken": MANAGE,
    "depot.core.v1.ProjectService/DeleteToken": MANAGE,
    "depot.core.v1.UsageService/GetProjectUsage": PROJECT,
    "depot.core.v1.BuildService/ListBuilds": PROJECT,
    "depot.core.v1.BuildService/GetBuild": BUILD,
    "depot.core.v1.BuildService/ShareBuild": BUILD,
    "depot.core.v1.BuildService/StopSharingBuild": BUILD,
    "depot.build.v1.BuildService/CreateBuild": PROJECT,
    "depot.build.v1.BuildService/FinishBuild": BUILD,
    "depot.build.v1.BuildService/GetBuildSteps": BUILD,
    "depot.build.v1.BuildService/GetBuildStepLogs": BUILD,
    "depot.build.v1.RegistryService/ListImages": PROJECT,
    "depot.build.v1.RegistryService/DeleteImage": PROJECT,
    "depot.buildkit.v1.BuildKitService/GetEndpoint": BUILD,
    "depot.buildkit.v1.BuildKitService/ReportHealth": BUILD,
    "depot.buildkit.v1.BuildKitService/ReleaseEndpoint": BUILD,
    "depot.cli.v1.BuildService/CreateBuild": PROJECT,
    "depot.cli.v1.BuildService/GetBuild": BUILD,
    "depot.cli.v1.BuildService/FinishBuild": BUILD,
    "depot.cli.v1.BuildService/GetBuildKitConnection": BUILD,
    "depot.cli.v1.BuildService/ReportBuildHealth": BUILD,
    "depot.cli.v1.BuildService/ReportTimings": BUILD,
    "depot.cli.v1.BuildService/ReportStatus": BUILD,
    "depot.cli.v1.BuildService/ReportStatusStream": BUILD,
    "depot.cli.v1.BuildService/ReportBuildContext": BUILD,
    "depot.cli.v1.BuildService/ListBuilds": PROJECT,
    "depot.cli.v1.BuildService/GetPullInfo": PULL,
    "depot.cli.v1.BuildService/GetPullToken": PULL,
    "depot.cli.v1.PushService/StartPush": UNIMPLEMENTED,
    "depot.cli.v1.PushService/FinishPush": UNIMPLEMENTED,
}

SYMBOLS = {A: "✓", D: "✗", U: "401"}


def markdown_table(cells: dict[str, tuple[str, ...]] | None = None) -> str:
    cells = cells or EXPECTED
    lines = [
        "| RPC | " + " | ".join(CREDENTIALS) + " |",
        "|---|" + "---|" * len(CREDENTIALS),
    ]
    for path in sorted(cells):
        service, method = path.rsplit("/", 1)
        name = f"`{service.removeprefix('depot.')}/{method}`"
        lines.append(f"| {name} | " + " | ".join(SYMBOLS[c] for c in cells[path]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
