"""The quota's reads of the registry's storage: token requests cannot make them run more often, or more
than one at a time, and a slow read (a project keeping very many blobs) is trusted for longer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

import pytest

from opendepot.registry import operations, storage
from opendepot.registry.keys import TokenSigner
from opendepot.registry.operations import Registry, RegistrySettings
from opendepot.store import Store


def registry(root: Path) -> Registry:
    settings = RegistrySettings("localhost:1", "http://localhost:1", quota_bytes=1, storage_root=root)
    return Registry(cast(Store, None), settings, cast(TokenSigner, None))


def test_requests_at_once_share_one_read_and_a_slow_read_is_trusted_ten_times_as_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []

    def slow_read(_root: Path, project_id: str, _since: float | None) -> storage.Kept:
        reads.append(project_id)
        time.sleep(0.2)
        return storage.Kept(123, 23)

    monkeypatch.setattr(storage, "kept_bytes", slow_read)
    monkeypatch.setattr(operations, "KEPT_BYTES_TTL", 0.01)
    ops = registry(tmp_path)

    async def scenario() -> None:
        answers = await asyncio.gather(*(ops._kept_bytes("p1", None) for _ in range(20)))
        assert answers == [storage.Kept(123, 23)] * 20
        assert reads == ["p1"]
        # The read took 0.2 s: it stands for at least 2 s, not the (here) 0.01 s floor.
        assert ops._kept["p1"][0] - time.monotonic() > 1.5
        assert await ops._kept_bytes("p1", None) == storage.Kept(123, 23)
        assert reads == ["p1"]
        # A caller that gives up does not cancel the read the others wait for.
        first = asyncio.ensure_future(ops._kept_bytes("p2", None))
        second = asyncio.ensure_future(ops._kept_bytes("p2", None))
        await asyncio.sleep(0.05)
        first.cancel()
        assert await second == storage.Kept(123, 23)
        assert reads == ["p1", "p2"]

    asyncio.run(scenario())
