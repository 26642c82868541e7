"""DeleteImage with the registry faked at its HTTP client: an index no tag keeps goes with the per-platform
manifests it names that no other image of the project names or is; any manifest still in use stays, and
when anything cannot be read none of them goes (garbage collection never deletes manifests itself)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from opendepot.clock import utcnow
from opendepot.registry import service as registry
from opendepot.registry.client import INDEX_TYPES, MANIFEST_TYPES, Manifest, RegistryError
from opendepot.registry.keys import TokenSigner
from opendepot.registry.operations import Registry, RegistrySettings
from opendepot.store import Store
from tests.support.domain import organization_with_project

INDEX, MANIFEST = INDEX_TYPES[0], MANIFEST_TYPES[0]


def digest(name: str) -> str:
    return "sha256:" + name * 64


class FakeRegistry:
    """Manifests by digest; records deletes; `unreadable` answers with an error."""

    def __init__(self, indexes: dict[str, list[str]], unreadable: frozenset[str] = frozenset()) -> None:
        self.indexes, self.unreadable = indexes, unreadable
        self.deleted: list[str] = []

    async def manifest(self, repository: str, reference: str) -> Manifest | None:
        if reference in self.unreadable:
            raise RegistryError(f"GET manifest {repository}@{reference}: HTTP 500")
        if reference in self.indexes:
            body = json.dumps({"manifests": [{"digest": d} for d in self.indexes[reference]]})
            return Manifest(body.encode(), INDEX, reference)
        return Manifest(b'{"layers": []}', MANIFEST, reference)

    async def delete(self, repository: str, reference: str) -> None:
        self.deleted.append(reference)

    async def put(self, repository: str, tag: str, manifest: Manifest) -> None:
        raise AssertionError("no tag is put back in these deletes")


def delete_with(store: Store, fake: FakeRegistry, tags: list[str]) -> list[str]:
    with store.transaction() as session:
        admin, project = organization_with_project(session)
        images = {
            "gone": (digest("a"), INDEX),  # names 1 (its own), 2 (shared with "other"), 3 (tagged itself)
            "other": (digest("b"), INDEX),  # names 2 and 4
            "child": (digest("3"), MANIFEST),  # a per-platform manifest of "gone", tagged on its own
        }
        for tag, (image_digest, media_type) in images.items():
            registry.record_push(session, project.id, tag, image_digest, media_type, 1, utcnow())
    ops = Registry(store, RegistrySettings("localhost:1", "http://localhost:1"), cast(TokenSigner, None))
    ops.client = cast(Any, fake)
    asyncio.run(ops.delete(admin, project.id, tags))
    return fake.deleted


def test_an_index_goes_with_the_manifests_only_it_names(store: Store) -> None:
    fake = FakeRegistry(
        {digest("a"): [digest("1"), digest("2"), digest("3")], digest("b"): [digest("2"), digest("4")]}
    )
    assert delete_with(store, fake, ["gone"]) == [digest("a"), digest("1")]


def test_when_an_image_cannot_be_read_no_manifest_it_names_goes(store: Store) -> None:
    fake = FakeRegistry(
        {digest("a"): [digest("1"), digest("2"), digest("3")], digest("b"): [digest("2"), digest("4")]},
        unreadable=frozenset({digest("b")}),
    )
    assert delete_with(store, fake, ["gone"]) == [digest("a")]  # the tag still goes
