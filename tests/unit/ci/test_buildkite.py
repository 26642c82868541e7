from __future__ import annotations

import pytest

from opendepot.ci import buildkite
from opendepot.ci.identity import Identity
from opendepot.errors import InvalidArgument

POLICY = {"organization_slug": "acme", "pipeline_slug": "web"}


def test_a_policy_names_organization_and_pipeline_slugs() -> None:
    assert buildkite.validate(POLICY) == POLICY
    with pytest.raises(InvalidArgument, match="pipeline_slug"):
        buildkite.validate({"organization_slug": "acme", "pipeline_slug": "no spaces"})


def test_both_slugs_must_match_exactly() -> None:
    issuer = buildkite.DEFAULT_ISSUER
    assert buildkite.matches(POLICY, Identity("buildkite", issuer, dict(POLICY)))
    assert not buildkite.matches(POLICY, Identity("buildkite", issuer, {**POLICY, "pipeline_slug": "api"}))
    assert not buildkite.matches(POLICY, Identity("buildkite", issuer, {"organization_slug": "acme"}))
