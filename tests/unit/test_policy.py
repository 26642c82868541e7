from __future__ import annotations

import pytest

from opendepot.errors import InvalidArgument
from opendepot.projects.policy import (
    DEFAULT_CACHE,
    GIB,
    CachePolicyInput,
    CacheSetting,
    check_hardware,
    check_region,
    check_trust_policy,
    resolve_cache,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, DEFAULT_CACHE),
        (CachePolicyInput(keep_bytes=None, keep_gb=20, keep_days=7), CacheSetting(20 * GIB, 7)),
        # keep_gb wins over keep_bytes when positive.
        (CachePolicyInput(keep_bytes=5 * GIB, keep_gb=20, keep_days=7), CacheSetting(20 * GIB, 7)),
        (CachePolicyInput(keep_bytes=5 * GIB, keep_gb=0, keep_days=7), CacheSetting(5 * GIB, 7)),
        # No size: the current size stays; keep_days 0 means no limit.
        (
            CachePolicyInput(keep_bytes=None, keep_gb=0, keep_days=0),
            CacheSetting(DEFAULT_CACHE.keep_bytes, 0),
        ),
        (CachePolicyInput(keep_bytes=0, keep_gb=0, keep_days=3), CacheSetting(DEFAULT_CACHE.keep_bytes, 3)),
    ],
)
def test_resolve_cache(given: CachePolicyInput | None, expected: CacheSetting) -> None:
    assert resolve_cache(given, DEFAULT_CACHE) == expected


def test_keep_gb_is_derived_from_bytes() -> None:
    assert CacheSetting(keep_bytes=75 * GIB + 5, keep_days=1).keep_gb == 75


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (CachePolicyInput(keep_bytes=None, keep_gb=-1, keep_days=1), "cache_policy.keep_gb"),
        (CachePolicyInput(keep_bytes=-1, keep_gb=0, keep_days=1), "cache_policy.keep_bytes"),
        (CachePolicyInput(keep_bytes=None, keep_gb=1, keep_days=-1), "cache_policy.keep_days"),
        (CachePolicyInput(keep_bytes=None, keep_gb=1 << 30, keep_days=1), "cache_policy.keep_gb"),
    ],
)
def test_resolve_cache_rejects(given: CachePolicyInput, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        resolve_cache(given, DEFAULT_CACHE)
    assert err.value.field == field


def test_hardware_and_region() -> None:
    assert check_hardware(None) is None
    assert check_hardware("8x16") == "8x16"
    with pytest.raises(InvalidArgument):
        check_hardware("3x3")
    assert check_region("eu-central-1", ("us-east-1", "eu-central-1")) == "eu-central-1"
    with pytest.raises(InvalidArgument) as err:
        check_region("", ("us-east-1",))
    assert err.value.field == "region_id"


def test_trust_policies() -> None:
    assert check_trust_policy("github", {"repository_owner": "acme", "repository": "acme/web"}) == {
        "repository_owner": "acme",
        "repository": "acme/web",
    }
    # The owner in owner/name is compared case-insensitively, as GitHub does.
    assert check_trust_policy("github", {"repository_owner": "Acme", "repository": "acme/web"})
    upper = {
        "organization_uuid": "0B7F5B0E-8D43-4A59-A53E-3C1C5FBB1A11",
        "project_uuid": "5a3e9c7f1b2d4e6f8a9b0c1d2e3f4a5b",
    }
    assert check_trust_policy("circleci", upper) == {
        "organization_uuid": "0b7f5b0e-8d43-4a59-a53e-3c1c5fbb1a11",
        "project_uuid": "5a3e9c7f-1b2d-4e6f-8a9b-0c1d2e3f4a5b",
    }
    for provider, fields, field in [
        ("github", {"repository_owner": "", "repository": "web"}, "github.repository_owner"),
        ("github", {"repository_owner": "-bad", "repository": "web"}, "github.repository_owner"),
        ("github", {"repository_owner": "acme", "repository": "a/b/c"}, "github.repository"),
        ("buildkite", {"organization_slug": "acme", "pipeline_slug": "has space"}, "buildkite.pipeline_slug"),
        ("circleci", {"organization_uuid": "acme", "project_uuid": ""}, "circleci.organization_uuid"),
        (None, {}, "provider"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            check_trust_policy(provider, fields)
        assert err.value.field == field, (provider, fields)
