"""The Python SDK (opendepot.client) runs the scenario the Node SDK does, against a running server."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from connectrpc.code import Code
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.client import (
    AsyncDepot,
    Depot,
    DepotError,
    build_v1,
    core_build_v1,
    core_v1,
    organization_v1,
    registry_v1,
    usage_v1,
)
from tests.e2e.test_builds import build
from tests.support.builds import builds_possible, busybox_context
from tests.support.server import Server


def test_projects_tokens_and_trust_policies(server: Server, org: tuple[str, str]) -> None:
    _org_id, token = org
    with Depot(server.url, token) as depot:
        projects = depot.core.v1.ProjectService
        created = projects.create_project(
            core_v1.CreateProjectRequest(name="py", region_id="eu-central-1")
        ).project
        assert created is not None and created.region_id == "eu-central-1"
        for i in range(3):
            projects.create_project(core_v1.CreateProjectRequest(name=f"py-{i}"))
        assert [p.name for p in depot.iter_projects(page_size=2)] == ["py", "py-0", "py-1", "py-2"]

        secret = projects.create_token(
            core_v1.CreateTokenRequest(project_id=created.project_id, description="ci")
        )
        listed = projects.list_tokens(core_v1.ListTokensRequest(project_id=created.project_id)).tokens
        assert [(t.token_id, t.description) for t in listed] == [(secret.token_id, "ci")]
        policy = projects.add_trust_policy(
            core_v1.AddTrustPolicyRequest(
                project_id=created.project_id,
                provider=Oneof(
                    "github", core_v1.TrustPolicy.GitHub(repository_owner="acme", repository="web")
                ),  # type: ignore[arg-type]
            )
        ).trust_policy
        assert policy is not None
        assert (
            len(
                projects.list_trust_policies(
                    core_v1.ListTrustPoliciesRequest(project_id=created.project_id)
                ).trust_policies
            )
            == 1
        )

        with pytest.raises(DepotError) as err:
            projects.get_project(core_v1.GetProjectRequest(project_id="zzzzzzzzzz"))
        assert err.value.code == Code.NOT_FOUND and "zzzzzzzzzz" in err.value.message
        [organization] = depot.core.v1.OrganizationService.list_organizations(
            organization_v1.ListOrganizationsRequest()
        ).organizations
        assert organization.org_id == _org_id

    with Depot(server.url, "odo_not-a-token") as stranger, pytest.raises(DepotError) as err:
        stranger.core.v1.ProjectService.list_projects(core_v1.ListProjectsRequest())
    assert err.value.code == Code.UNAUTHENTICATED


def test_environment_defaults_and_async(
    server: Server, org: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _org_id, token = org
    monkeypatch.setenv("DEPOT_API_URL", server.url)
    monkeypatch.setenv("DEPOT_TOKEN", token)
    with Depot() as depot:
        depot.core.v1.ProjectService.create_project(core_v1.CreateProjectRequest(name="env"))

    async def names() -> list[str]:
        async with AsyncDepot() as depot:
            return [p.name async for p in depot.iter_projects()]

    assert asyncio.run(names()) == ["env"]


@pytest.mark.skipif(builds_possible() is not None, reason=str(builds_possible()))
def test_builds_steps_logs_and_usage(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org_id, token = org
    start = datetime.now(UTC) - timedelta(seconds=1)
    with Depot(server.url, token) as depot:
        project = depot.core.v1.ProjectService.create_project(
            core_v1.CreateProjectRequest(name="py-build")
        ).project
        assert project is not None
        code, output = build(
            server,
            token,
            project.project_id,
            busybox_context(tmp_path / "ctx", "echo from-sdk"),
            "--save",
            "--save-tag",
            "sdk",
        )
        assert code == 0, output
        [built] = list(depot.iter_builds(project.project_id))
        assert built.status == core_build_v1.Build.Status.SUCCESS
        steps = list(depot.iter_build_steps(project.project_id, built.build_id, page_size=2))
        [run] = [s for s in steps if " RUN " in s.name]
        assert run.cache_state == build_v1.GetBuildStepsResponse.BuildStep.CacheState.UNCACHED
        logs = [line.message for line in depot.iter_step_logs(project.project_id, built.build_id, run.digest)]
        assert logs == ["from-sdk"]
        end = datetime.now(UTC) + timedelta(seconds=1)
        usage = depot.core.v1.UsageService.get_project_usage(
            usage_v1.GetProjectUsageRequest(
                project_id=project.project_id,
                start_at=Timestamp.from_datetime(start),
                end_at=Timestamp.from_datetime(end),
            )
        ).usage
        assert usage is not None and usage.build_count == 1

        # Images: the saved tags, paged one at a time, then one deleted.
        deadline = time.monotonic() + 20
        while len(list(depot.iter_images(project.project_id))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        tags = {i.tag for i in depot.iter_images(project.project_id, page_size=1)}
        assert tags == {built.build_id, "sdk"}
        depot.build.v1.RegistryService.delete_image(
            registry_v1.DeleteImageRequest(project_id=project.project_id, image_tags=["sdk"])
        )
        assert [i.tag for i in depot.iter_images(project.project_id)] == [built.build_id]
