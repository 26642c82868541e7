"""An image's size is read from the pusher's own manifests: bounded work and memory however the index is
made, and no size that breaks the sums (ListImages' uint64, SQLite's SUM). The registry is a stand-in at the
HTTP seam; tests/e2e/test_registry.py pushes real images."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections import Counter
from typing import Any

import httpx
import pytest

from opendepot.registry import client as client_module
from opendepot.registry.client import RegistryClient, RegistryError

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class _Signer:
    def sign(self, *_args: Any) -> tuple[str, dt.datetime]:
        return "token", dt.datetime.now(dt.UTC)


def registry(manifests: dict[str, tuple[str, dict[str, Any]]], reads: Counter[str]) -> RegistryClient:
    def serve(request: httpx.Request) -> httpx.Response:
        reference = request.url.path.rsplit("/", 1)[-1]
        reads[reference] += 1
        if reference not in manifests:
            return httpx.Response(404)
        media_type, document = manifests[reference]
        return httpx.Response(
            200, content=json.dumps(document).encode(), headers={"content-type": media_type}
        )

    client = RegistryClient("http://registry.invalid", _Signer())  # type: ignore[arg-type]
    client._http = httpx.AsyncClient(base_url="http://registry.invalid", transport=httpx.MockTransport(serve))
    return client


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def image(*layers: Any) -> tuple[str, dict[str, Any]]:
    return MANIFEST, {
        "config": {"digest": digest("config"), "size": 100},
        "layers": [{"digest": digest(f"layer{i}"), "size": size} for i, size in enumerate(layers)],
    }


def test_an_index_reads_each_child_once() -> None:
    reads: Counter[str] = Counter()
    child = digest("child")
    index = (INDEX, {"manifests": [{"digest": child}] * 600})
    client = registry({"top": index, child: image(1000, 2000)}, reads)
    assert asyncio.run(client.image_size("p", "top")) == (INDEX, 3100)
    assert reads[child] == 1  # not 600 times (each held at once: 2.5 GiB for a 4 MiB child)


def test_an_index_of_too_many_children_is_not_read() -> None:
    reads: Counter[str] = Counter()
    children = [{"digest": digest(f"c{i}")} for i in range(client_module.MAX_INDEX_CHILDREN + 1)]
    client = registry({"top": (INDEX, {"manifests": children})}, reads)
    with pytest.raises(RegistryError, match="names over"):
        asyncio.run(client.image_size("p", "top"))
    assert sum(reads.values()) == 1


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ((-(2**50), 10), 110),  # negative: counted as 0 (ListImages failed on it)
        ((2**62, 2**62), 100),  # past a blob's bound: 0 (SQLite's SUM overflowed)
        (("12", 1.5, True, None), 100),  # not whole numbers
        ((client_module.MAX_BLOB_SIZE,) * 20, client_module.MAX_IMAGE_SIZE),  # the image's bound
    ],
)
def test_sizes_that_are_not_a_blobs_count_as_nothing(sizes: tuple[Any, ...], expected: int) -> None:
    client = registry({"top": image(*sizes)}, Counter())
    assert asyncio.run(client.image_size("p", "top")) == (MANIFEST, expected)
