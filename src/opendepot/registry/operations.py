"""What API workers do with the registry: answer its token requests, read its notifications into the
image list, delete images. Knows the store and the registry's HTTP API, nothing of protobuf."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opendepot.auth import Principal
from opendepot.clock import as_utc, utcnow
from opendepot.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from opendepot.ids import looks_like_id
from opendepot.store import Store

from . import service, storage
from .client import INDEX_TYPES, MANIFEST_TYPES, RegistryClient, RegistryError
from .keys import Access, TokenSigner

log = logging.getLogger("opendepot.registry")
REGISTRY_TOKEN_LIFETIME = dt.timedelta(minutes=15)
SIZE_ATTEMPTS = 6
# Scopes in one token request. A push asks for one repository, plus a few to mount blobs from; without a bound
# one 1 MiB request named 20,000 and held an API worker's loop for half a second for a 4 MB token.
MAX_SCOPES = 64
# distribution's repository names: lower-case path components joined by separators, 255 characters at most.
MAX_REPOSITORY_NAME = 255
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# DeleteImage reads the project's other indexes to know which per-platform manifests are still in use; past
# this many it deletes none of them (each read is a registry round trip).
MAX_SCANNED_INDEXES = 1000
# How long what a project keeps in the registry's storage is trusted before the quota reads it again (a
# token granted lasts REGISTRY_TOKEN_LIFETIME anyway); a delete makes it read again at once.
KEPT_BYTES_TTL = 3.0
# ... or this many times as long as the last read took, if longer: a project that keeps many small blobs
# (14 us each to read) cannot make token requests spend more than a tenth of a thread on it.
KEPT_BYTES_TTL_PER_READ = 10


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    # Host (and port) in image references: what buildkitd pushes to and clients pull from.
    host: str
    # Where opendepot itself reaches the registry.
    url: str
    # What a project may keep in the registry before pushes to it are refused (0: no quota).
    quota_bytes: int = 0
    # With a quota, the blobs a project may keep (--registry-quota-blobs; 0: from quota_bytes).
    quota_blobs: int = 0
    # The registry's filesystem storage, when this process can read it: the quota then also counts what
    # tags do not name (pushes by digest, unfinished uploads). None: the image list alone (S3).
    storage_root: Path | None = None


def parse_scopes(values: Sequence[str]) -> list[Access]:
    """`repository:<name>:pull,push`, several per value separated by spaces; malformed ones are skipped, and
    so are names that are no repository's (distribution's grammar, 255 characters at most). Each action
    counts once: a granted scope is copied into the token, so a 1 MiB name or 100,000 repeated actions made
    a 2.7 MiB token."""
    scopes: list[Access] = []
    items = [item for value in values for item in value.split()]
    if len(items) > MAX_SCOPES:
        raise InvalidArgument("scope", f"at most {MAX_SCOPES} scopes in one token request")
    for item in items:
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind and len(name) <= MAX_REPOSITORY_NAME and REPOSITORY_NAME.fullmatch(name) and actions:
            scopes.append(Access(kind, name, tuple(dict.fromkeys(a for a in actions.split(",") if a))))
    return scopes


class Registry:
    def __init__(self, store: Store, settings: RegistrySettings, signer: TokenSigner) -> None:
        self.store = store
        self.settings = settings
        self.signer = signer
        self.client = RegistryClient(settings.url, signer)
        self._kept: dict[str, tuple[float, storage.Kept]] = {}  # project -> (trusted until, what it keeps)
        self._reading: dict[str, asyncio.Future[storage.Kept]] = {}  # one read per project at a time
        # The last garbage collection asked for and the last one finished, as those reads saw them.
        self._kept_marks: tuple[dt.datetime | None, dt.datetime | None] = (None, None)

    @property
    def host(self) -> str:
        return self.settings.host

    async def token(self, principal: Principal, scopes: Sequence[str]) -> tuple[str, dt.datetime, int]:
        requested = parse_scopes(scopes)
        quota = self.settings.quota_bytes
        granted = await self.store.read(lambda s: service.grant(s, principal, requested, quota))
        pushing = sorted({a.name.partition("/")[0] for a in granted if "push" in a.actions})
        if pushing:  # only the projects the caller may push to are read
            await self.refuse_over_storage_quota(pushing)
        token, issued = self.signer.sign(
            f"{principal.kind}:{principal.token_id}", granted, REGISTRY_TOKEN_LIFETIME
        )
        return token, issued, int(REGISTRY_TOKEN_LIFETIME.total_seconds())

    async def refuse_over_storage_quota(self, project_ids: Sequence[str]) -> None:
        """ResourceExhausted if one of these projects (which the caller may push to) keeps its quota or more
        in the registry's filesystem storage; nothing without a quota or such a storage. A delete (by any
        worker) frees room at once, a garbage collection the blobs no manifest named."""
        quota = self.settings.quota_bytes
        if not quota or self.settings.storage_root is None:
            return
        marks = await self.store.read(service.collection_marks)
        if marks != self._kept_marks:
            self._kept, self._reading, self._kept_marks = {}, {}, marks
        for project_id in project_ids:
            kept = await self._kept_bytes(project_id, marks[1])
            try:
                service.refuse_over_quota(project_id, kept.total, quota, kept.unnamed)
                service.refuse_over_blob_quota(
                    project_id,
                    kept.blobs,
                    service.blob_quota(quota, self.settings.quota_blobs),
                    kept.unnamed_blobs,
                )
            except ResourceExhausted:
                # Only a collection frees unnamed blobs, and the tenant may have no image to delete.
                if kept.unnamed_blobs and await self.store.run(service.ask_for_collection):
                    log.info(
                        "project %s is over its registry quota with %d blobs (%d bytes) no manifest "
                        "names: garbage collection asked for",
                        project_id,
                        kept.unnamed_blobs,
                        kept.unnamed,
                    )
                raise

    async def _kept_bytes(self, project_id: str, collected: dt.datetime | None) -> storage.Kept:
        """What the project keeps in the registry's storage, read beside the loop (80 ms for 1,000
        manifests), at most once per KEPT_BYTES_TTL per project, or ten times what the read took, and never
        twice at once: token requests cannot make it read more. `collected`: when the last garbage
        collection that finished started."""
        root = self.settings.storage_root
        if root is None:
            return storage.Kept(0)
        cached = self._kept.get(project_id)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        reading = self._reading.get(project_id)
        if reading is None:
            since = as_utc(collected).timestamp() if collected is not None else None
            # Into the cache of these marks: a read a delete or collection overtook is not kept.
            reading = asyncio.ensure_future(self._read_kept(self._kept, root, project_id, since))
            self._reading[project_id] = reading

            def forget(done: asyncio.Future[storage.Kept]) -> None:
                if self._reading.get(project_id) is done:
                    del self._reading[project_id]

            reading.add_done_callback(forget)
        return await asyncio.shield(reading)  # one caller giving up does not cancel the others' read

    @staticmethod
    async def _read_kept(
        cache: dict[str, tuple[float, storage.Kept]], root: Path, project_id: str, since: float | None
    ) -> storage.Kept:
        started = time.monotonic()
        kept = await asyncio.to_thread(storage.kept_bytes, root, project_id, since)
        finished = time.monotonic()
        trusted = max(KEPT_BYTES_TTL, KEPT_BYTES_TTL_PER_READ * (finished - started))
        cache[project_id] = (finished + trusted, kept)
        return kept

    async def delete(self, principal: Principal, project_id: str, references: Sequence[str]) -> None:
        """Removes exactly the tags named. The registry deletes a manifest with every tag on it, so tags that
        share the image and were not named are put back from the manifest read before. An index no tag
        keeps goes with the manifests it names that nothing else of the project still uses, so that garbage
        collection, which never deletes manifests itself, can reclaim their layers."""
        plan = await self.store.read(lambda s: service.plan_delete(s, principal, project_id, references))
        try:
            freed = await self._freed_children(plan)
            for digest, keep in plan.keep.items():
                manifest = await self.client.manifest(plan.project_id, digest) if keep else None
                await self.client.delete(plan.project_id, digest)
                if manifest is not None:
                    for tag in keep:
                        await self.client.put(plan.project_id, tag, manifest)
            for child in freed:
                await self.client.delete(plan.project_id, child)
        except (RegistryError, OSError) as exc:
            log.error("deleting %s from %s: %s", plan.tags, plan.project_id, exc)
            raise Unavailable(f"the registry could not delete the images: {exc}") from exc
        await self.store.run(lambda s: service.forget_tags(s, plan.project_id, plan.tags))

    async def _freed_children(self, plan: service.DeletePlan) -> list[str]:
        """The manifests named by the indexes this delete removes whole that no other image of the project
        names or is: read from the registry before anything is deleted. Any doubt (an image that cannot be
        read, a project with more than MAX_SCANNED_INDEXES other indexes) keeps them all: space leaked (with a
        warning in the log), never a deletion of something still in use."""
        gone = [digest for digest, keep in plan.keep.items() if not keep]
        try:
            children: set[str] = set()
            for digest in gone:
                children |= await self._children(plan.project_id, digest)
            if not children:
                return []
            others = await self.store.read(lambda s: service.other_images(s, plan.project_id, gone))
            in_use = {digest for digest, _media_type in others} & children
            indexes = [digest for digest, media_type in others if media_type in INDEX_TYPES]
            if len(indexes) > MAX_SCANNED_INDEXES:
                raise RegistryError(f"{len(indexes)} other indexes, over {MAX_SCANNED_INDEXES}")
            for digest in indexes:
                in_use |= await self._children(plan.project_id, digest)
        except RegistryError as exc:
            log.warning(
                "project %s: the manifests named by the deleted images are kept (their space too): %s",
                plan.project_id,
                exc,
            )
            return []
        return sorted(children - in_use)

    async def _children(self, repository: str, digest: str) -> set[str]:
        """The manifests an index names (none for a plain manifest). RegistryError if it cannot be read."""
        manifest = await self.client.manifest(repository, digest)
        if manifest is None:
            raise RegistryError(f"manifest {repository}@{digest} is gone")
        if manifest.media_type not in INDEX_TYPES and "manifests" not in manifest.document:
            return set()
        return {str(child["digest"]) for child in manifest.document.get("manifests", []) if "digest" in child}

    async def record(self, envelope: dict[str, Any]) -> int:
        """Applies a notification envelope; returns how many events changed the image list."""
        changed = 0
        for event in envelope.get("events") or []:
            try:
                changed += await self._apply(event)
            except (RegistryError, OSError, KeyError, ValueError, TypeError) as exc:
                log.warning("registry event %s not applied: %s", event.get("id"), exc)
        return changed

    async def _image(self, repository: str, tag: str, digest: str) -> tuple[str, int] | None:
        """The media type and size of the image the tag names, if it still names that digest (None for a
        late event about a tag deleted or moved since). Retried briefly either way: when BuildKit pushes one
        image under several tags at once, the filesystem driver can show a half-rewritten link for a moment
        (distribution answers 404, or 500 "invalid checksum digest")."""
        for attempt in range(SIZE_ATTEMPTS):
            last = attempt == SIZE_ATTEMPTS - 1
            try:
                if await self.client.digest_of(repository, tag) == digest:
                    return await self.client.image_size(repository, digest)
                if last:
                    return None
            except RegistryError:
                if last:
                    raise
            await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _apply(self, event: dict[str, Any]) -> int:
        target = event.get("target") or {}
        repository = str(target.get("repository", ""))
        if not looks_like_id(repository):
            return 0
        action = event.get("action")
        digest = str(target.get("digest", ""))
        if action == "push":
            tag = target.get("tag")
            if not tag or target.get("mediaType") not in (*INDEX_TYPES, *MANIFEST_TYPES):
                return 0
            found = await self._image(repository, str(tag), digest)
            if found is None:
                return 0  # a late event for a tag deleted or moved since
            media_type, size = found
            at = as_utc(dt.datetime.fromisoformat(event["timestamp"])) if event.get("timestamp") else utcnow()
            pushed = await self.store.run(
                lambda s: service.record_push(s, repository, str(tag), digest, media_type, size, at)
            )
            return int(pushed)
        # Deletes need no event: no client is granted delete, so every delete is DeleteImage's own, which
        # updates the store itself (and an event handled mid-way through it would race its re-tagging).
        return 0


def no_registry() -> FailedPrecondition:
    return FailedPrecondition("this server runs no registry (install docker-registry, see --registry)")
