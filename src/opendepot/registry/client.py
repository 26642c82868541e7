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
        """(media type, bytes of config plus layers); for an index, over its manifests, each blob once."""
        top = await self.manifest(repository, digest)
        if top is None:
            raise RegistryError(f"manifest {repository}@{digest} is gone")
        blobs: dict[str, int] = {}
        manifests = [top]
        if top.media_type in INDEX_TYPES or "manifests" in top.document:
            manifests = []
            for child in top.document.get("manifests", []):
                found = await self.manifest(repository, str(child["digest"]))
                if found is not None:
                    manifests.append(found)
        for manifest in manifests:
            document = manifest.document
            for blob in [document.get("config") or {}, *(document.get("layers") or [])]:
                if "digest" in blob:
                    blobs[str(blob["digest"])] = int(blob.get("size", 0))
        return top.media_type, sum(blobs.values())

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
