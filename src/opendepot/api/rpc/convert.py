"""Protobuf <-> domain conversions shared by the handlers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from opendepot.errors import InvalidArgument
from opendepot.gen.depot.core.v1 import project_pb
from opendepot.pagination import PageRequest, page_request
from opendepot.projects.models import Project, TrustPolicy
from opendepot.projects.policy import HARDWARE_SIZES, CachePolicyInput
from opendepot.projects.service import cache_of

_HARDWARE_BY_ENUM = {
    project_pb.Hardware.HARDWARE_16X32: "16x32",
    project_pb.Hardware.HARDWARE_4X4: "4x4",
    project_pb.Hardware.HARDWARE_8X8: "8x8",
    project_pb.Hardware.HARDWARE_8X16: "8x16",
    project_pb.Hardware.HARDWARE_32X64: "32x64",
    project_pb.Hardware.HARDWARE_64X128: "64x128",
    project_pb.Hardware.HARDWARE_96X192: "96x192",
    project_pb.Hardware.HARDWARE_192X384: "192x384",
}
_ENUM_BY_HARDWARE = {size: enum for enum, size in _HARDWARE_BY_ENUM.items()}
assert set(_ENUM_BY_HARDWARE) == set(HARDWARE_SIZES)


def timestamp(value: datetime) -> Timestamp:
    return Timestamp.from_datetime(value)


def hardware_in(value: project_pb.Hardware) -> str | None:
    """UNSPECIFIED means the default; an unknown number is refused."""
    if value == project_pb.Hardware.UNSPECIFIED:
        return None
    size = _HARDWARE_BY_ENUM.get(value)
    if size is None:
        raise InvalidArgument("hardware", f"unknown value {int(value)}")
    return size


def cache_policy_in(policy: project_pb.CachePolicy) -> CachePolicyInput:
    return CachePolicyInput(
        keep_bytes=policy.keep_bytes if policy.has_field("keep_bytes") else None,
        keep_gb=policy.keep_gb,
        keep_days=policy.keep_days,
    )


def project_out(project: Project) -> project_pb.Project:
    cache = cache_of(project)
    return project_pb.Project(
        project_id=project.id,
        organization_id=project.organization_id,
        name=project.name,
        region_id=project.region_id,
        created_at=timestamp(project.created_at),
        cache_policy=project_pb.CachePolicy(
            keep_bytes=cache.keep_bytes, keep_gb=cache.keep_gb, keep_days=cache.keep_days
        ),
        hardware=_ENUM_BY_HARDWARE[project.hardware],
    )


def trust_policy_out(policy: TrustPolicy) -> project_pb.TrustPolicy:
    c = policy.claims
    provider: Oneof[Any, Any]
    match policy.provider:
        case "github":
            provider = Oneof(
                "github",
                project_pb.TrustPolicy.GitHub(
                    repository_owner=c["repository_owner"], repository=c["repository"]
                ),
            )
        case "buildkite":
            provider = Oneof(
                "buildkite",
                project_pb.TrustPolicy.Buildkite(
                    organization_slug=c["organization_slug"], pipeline_slug=c["pipeline_slug"]
                ),
            )
        case "gitlab":
            provider = Oneof(
                "gitlab",
                project_pb.TrustPolicy.GitLab(
                    namespace_path=c["namespace_path"], project_path=c["project_path"]
                ),
            )
        case _:
            provider = Oneof(
                "circleci",
                project_pb.TrustPolicy.CircleCI(
                    organization_uuid=c["organization_uuid"], project_uuid=c["project_uuid"]
                ),
            )
    return project_pb.TrustPolicy(trust_policy_id=policy.id, provider=provider)


def trust_policy_in(
    provider: Oneof[Any, Any] | None,
) -> tuple[str | None, dict[str, str]]:
    """The provider name and its fields; (None, {}) when the oneof is unset."""
    if provider is None:
        return None, {}
    value = provider.value
    return provider.field, {f.name: getattr(value, f.name) for f in value.desc().fields}


def page_of(message: Any, list_name: str) -> PageRequest:
    return page_request(
        list_name,
        message.page_size if message.has_field("page_size") else None,
        message.page_token if message.has_field("page_token") else None,
    )
