"""The CLI's status reports are kept up to a bound per build, counted by a running total on the build."""

from __future__ import annotations

import pytest

from opendepot.builds import queries
from opendepot.builds import service as builds
from opendepot.store import Store
from tests.support.domain import running_build


def test_reports_are_kept_until_the_build_holds_its_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builds, "MAX_STATUS_BYTES_PER_BUILD", 100)
    admin, build_id = running_build(store)
    kept = []
    for payloads in ([b"a" * 40], [b"b" * 40, b"c" * 15], [b"d" * 10]):  # the last passes the bound
        with store.transaction() as session:
            kept.append(builds.record_status(session, admin, build_id, payloads))
    assert kept == [True, True, False]
    with store.transaction() as session:
        stored = queries.status_reports(session, build_id)
        target = queries.status_target(session, build_id)
    assert target is not None
    total = target.status_bytes
    assert sorted(r.payload[:1] for r in stored) == [b"a", b"b", b"c"]
    assert total == 95 == sum(len(r.payload) for r in stored)
