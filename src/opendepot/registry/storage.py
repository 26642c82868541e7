"""What a project's repositories keep in the registry's filesystem storage, read from distribution's own
layout: every manifest still in them, tagged or not (a deleted one is unlinked at once), with the config
and layers it names, each blob once; their unfinished uploads; and the blobs uploaded since the last garbage
collection that no manifest of the project names (a tenant could otherwise upload blobs without ever
pushing a manifest, and only a collection, which runs after deletes, would free them). The image list counts
only what tags name; this also counts what a push by digest, an unfinished upload, or blobs alone left."""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_HEX = frozenset(string.hexdigits.lower())
# A manifest larger than this is counted by its own size only (its blobs are not read from it).
MAX_MANIFEST_READ = 4 << 20


def filesystem_root(storage: str, default: Path) -> Path | None:
    """The storage's directory (--registry-storage), or None when it is not a filesystem (S3)."""
    if not storage:
        return default
    parts = urlsplit(storage)
    return Path(parts.path) if parts.scheme in ("", "file") else None


@dataclass(frozen=True, slots=True)
class Kept:
    total: int
    # Of the total: blobs uploaded since the last collection that no manifest of the project names. Only a
    # garbage collection frees them (nothing the tenant can delete does).
    unnamed: int = 0
    # How many blobs these bytes are (manifests and what they name, each once, blobs uploaded alone, and
    # unfinished uploads), and of them the unnamed ones: each is files on disk, and tiny blobs would use up
    # the disk's inodes long before its bytes.
    blobs: int = 0
    unnamed_blobs: int = 0


def kept_bytes(root: Path, project_id: str, collected_at: float | None = None) -> Kept:
    """collected_at: when the last garbage collection started (epoch seconds), None if none ran. A blob
    linked into the project before it and still stored was kept by the collection, so some manifest
    (maybe another project's) names it: it is not counted unless a manifest of this project names it."""
    v2 = root / "docker" / "registry" / "v2"
    blobs = v2 / "blobs" / "sha256"
    manifests: set[str] = set()
    deleted: set[str] = set()
    uploaded: set[str] = set()
    uploads = 0
    upload_count = 0
    pending = [v2 / "repositories" / project_id]
    while pending:  # the project's repository and those beneath it (`<project>/<name>`)
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name == "_manifests":
                linked, unlinked = _revisions(Path(entry.path) / "revisions" / "sha256")
                manifests |= linked
                deleted |= unlinked
            elif entry.name == "_layers":
                uploaded |= _linked_since(Path(entry.path) / "sha256", collected_at)
            elif entry.name == "_uploads":
                size, count = _upload_bytes(Path(entry.path))
                uploads, upload_count = uploads + size, upload_count + count
            else:
                pending.append(Path(entry.path))
    named = set(manifests)
    for digest in manifests:
        named |= _blobs_named(blobs / digest[:2] / digest / "data")
    unnamed = uploaded - named
    if unnamed:  # a deleted manifest's blobs are freed by deleting it: they wait for the collection
        for digest in deleted:
            unnamed -= _blobs_named(blobs / digest[:2] / digest / "data")
    named_bytes, named_count = _sizes(blobs, named)
    unnamed_bytes, unnamed_count = _sizes(blobs, unnamed)
    return Kept(
        uploads + named_bytes + unnamed_bytes,
        unnamed_bytes,
        upload_count + named_count + unnamed_count,
        unnamed_count,
    )


def _sizes(blobs: Path, digests: set[str]) -> tuple[int, int]:
    """(bytes, blobs) of those digests the store holds."""
    total = found = 0
    for digest in digests:
        try:
            total += (blobs / digest[:2] / digest / "data").stat().st_size
        except OSError:
            continue  # not (or no longer) in the store
        found += 1
    return total, found


def _linked_since(directory: Path, since: float | None) -> set[str]:
    """Blobs whose link in the repository was written at or after `since` (all, when None)."""
    found: set[str] = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        if not _is_hex(name):
            continue
        try:
            written = (directory / name / "link").stat().st_mtime
        except OSError:
            continue
        if since is None or written >= since:
            found.add(name)
    return found


def _blobs_named(path: Path) -> set[str]:
    """The config and layers a manifest names (an index names manifests, which are revisions themselves)."""
    try:
        if path.stat().st_size > MAX_MANIFEST_READ:
            return set()
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return set()
    if not isinstance(document, dict):
        return set()
    described = [document.get("config"), *(document.get("layers") or [])]
    found = set()
    for descriptor in described:
        digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
        if isinstance(digest, str) and digest.startswith("sha256:") and _is_hex(digest[7:]):
            found.add(digest[7:])
    return found


def _is_hex(name: str) -> bool:
    return len(name) == 64 and _HEX.issuperset(name)


def _revisions(directory: Path) -> tuple[set[str], set[str]]:
    """The revisions still linked, and those deleted: deleting a manifest removes its `link` file and
    leaves the directory."""
    try:
        names = os.listdir(directory)
    except OSError:
        return set(), set()
    linked: set[str] = set()
    deleted: set[str] = set()
    for name in names:
        if _is_hex(name):
            (linked if (directory / name / "link").is_file() else deleted).add(name)
    return linked, deleted


def _upload_bytes(directory: Path) -> tuple[int, int]:
    """(bytes, uploads) of the unfinished uploads."""
    total = found = 0
    try:
        uploads = list(os.scandir(directory))
    except OSError:
        return 0, 0
    for upload in uploads:
        try:
            total += (Path(upload.path) / "data").stat().st_size
        except OSError:
            continue
        found += 1
    return total, found
