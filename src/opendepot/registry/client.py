"""opendepot's own calls to the registry's HTTP API (reading manifests, deleting, re-tagging), authorized
with tokens it signs for itself."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import httpx

from .keys import Access, TokenSigner

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
ACCEPT = ", ".join((*INDEX_TYPES, *MANIFEST_TYPES))
# What an image's size is read from, bounded (the manifests are the pusher's). Real indexes name a few
# platforms; real images have at most a few hundred layers (overlayfs stacks 128).
MAX_INDEX_CHILDREN = 256
MAX_IMAGE_BLOBS = 10_000
MAX_BLOB_SIZE = 1 << 40  # 1 TiB
# An image counts at most this (16 TiB): the sums over a project's or an organization's images stay far
# below a 64-bit integer (SQLite's SUM raises on overflow).
MAX_IMAGE_SIZE = 1 << 44
SELF = "opendepot"


class RegistryError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str

    @property
    def document(self) -> dict[str, Any]:
        parsed = json.loads(self.body)
        if not isinstance(parsed, dict):
            raise RegistryError("manifest is not a JSON object")
        return parsed


class RegistryClient:
    def __init__(self, url: str, signer: TokenSigner, *, timeout: float = 30) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout)
        self._signer = signer

    async def close(self) -> None:
        await self._http.aclose()

    def _auth(self, repository: str, *actions: str) -> dict[str, str]:
        token, _ = self._signer.sign(
            SELF, [Access("repository", repository, actions)], dt.timedelta(minutes=5)
        )
        return {"Authorization": f"Bearer {token}"}

    async def manifest(self, repository: str, reference: str) -> Manifest | None:
        headers = {**self._auth(repository, "pull"), "Accept": ACCEPT}
        response = await self._http.get(f"/v2/{repository}/manifests/{reference}", headers=headers)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryError(f"GET manifest {repository}:{reference}: HTTP {response.status_code}")
        body = response.content
        digest = response.headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(body).hexdigest()
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Manifest(body, media_type, digest)

    async def digest_of(self, repository: str, reference: str) -> str | None:
        """What a tag names now, or None if the registry has no such tag."""
        headers = {**self._auth(repository, "pull"), "Accept": ACCEPT}
        response = await self._http.head(f"/v2/{repository}/manifests/{reference}", headers=headers)
        if response.status_code not in (200, 404):
            raise RegistryError(f"HEAD manifest {repository}:{reference}: HTTP {response.status_code}")
        return response.headers.get("docker-content-digest") if response.status_code == 200 else None

    async def image_size(self, repository: str, digest: str) -> tuple[str, int]:
        """(media type, bytes of config plus layers); for an index, over its manifests, each blob once.

        The manifests are the pusher's: an index names each child once here however often it lists it, at
        most MAX_INDEX_CHILDREN of them, each read and let go in turn (an index naming one 4 MiB manifest
        600 times held 2.5 GiB); a blob size that is not a whole number in 0..MAX_BLOB_SIZE counts as 0
        (a negative one made ListImages and GetUsage fail)."""
        top = await self.manifest(repository, digest)
        if top is None:
            raise RegistryError(f"manifest {repository}@{digest} is gone")
        blobs: dict[str, int] = {}
        document = top.document
        if top.media_type in INDEX_TYPES or "manifests" in document:
            children = dict.fromkeys(_digests(document.get("manifests")))
            if len(children) > MAX_INDEX_CHILDREN:
                raise RegistryError(f"index {repository}@{digest} names over {MAX_INDEX_CHILDREN} manifests")
            for child in children:
                found = await self.manifest(repository, child)
                if found is not None:
                    _add_blobs(blobs, found.document)
                if len(blobs) > MAX_IMAGE_BLOBS:
                    break
        else:
            _add_blobs(blobs, document)
        if len(blobs) > MAX_IMAGE_BLOBS:
            raise RegistryError(f"image {repository}@{digest} names over {MAX_IMAGE_BLOBS} blobs")
        return top.media_type, min(sum(blobs.values()), MAX_IMAGE_SIZE)

    async def delete(self, repository: str, digest: str) -> None:
        headers = self._auth(repository, "pull", "push", "delete")
        response = await self._http.delete(f"/v2/{repository}/manifests/{digest}", headers=headers)
        if response.status_code not in (202, 404):
            raise RegistryError(f"DELETE manifest {repository}@{digest}: HTTP {response.status_code}")

    async def put(self, repository: str, tag: str, manifest: Manifest) -> None:
        headers = {**self._auth(repository, "pull", "push"), "Content-Type": manifest.media_type}
        response = await self._http.put(
            f"/v2/{repository}/manifests/{tag}", headers=headers, content=manifest.body
        )
        if response.status_code != 201:
            raise RegistryError(f"PUT manifest {repository}:{tag}: HTTP {response.status_code}")

    async def ping(self) -> bool:
        """The registry answers (401 without a token is an answer)."""
        try:
            response = await self._http.get("/v2/")
        except httpx.TransportError:
            return False
        return response.status_code in (200, 401)


def _digests(entries: Any) -> list[str]:
    """The digests an index's `manifests` names, skipping what is not an entry with one."""
    if not isinstance(entries, list):
        return []
    return [str(e["digest"]) for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)]


def _add_blobs(blobs: dict[str, int], document: dict[str, Any]) -> None:
    config, layers = document.get("config"), document.get("layers")
    for blob in [config, *(layers if isinstance(layers, list) else [])]:
        if isinstance(blob, dict) and isinstance(blob.get("digest"), str):
            size = blob.get("size")
            fits = isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_BLOB_SIZE
            blobs[blob["digest"]] = size if fits and isinstance(size, int) else 0
