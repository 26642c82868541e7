"""What a project's repositories keep in the registry's filesystem storage, read from distribution's own
layout: every manifest still in them, tagged or not (a deleted one is unlinked at once), with the config
and layers it names, each blob once; and their unfinished uploads. The image list counts only what tags
name; this also counts what a push by digest or an upload never finished left behind. Blobs uploaded and
never named by a manifest are not counted (they go at the next garbage collection)."""

from __future__ import annotations

import json
import os
import string
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


def kept_bytes(root: Path, project_id: str) -> int:
    v2 = root / "docker" / "registry" / "v2"
    blobs = v2 / "blobs" / "sha256"
    manifests: set[str] = set()
    uploads = 0
    pending = [v2 / "repositories" / project_id]
    while pending:  # the project's repository and those beneath it (`<project>/<name>`)
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or entry.name == "_layers":
                continue
            if entry.name == "_manifests":
                manifests |= _digests(Path(entry.path) / "revisions" / "sha256")
            elif entry.name == "_uploads":
                uploads += _upload_bytes(Path(entry.path))
            else:
                pending.append(Path(entry.path))
    named = set(manifests)
    for digest in manifests:
        named |= _blobs_named(blobs / digest[:2] / digest / "data")
    total = uploads
    for digest in named:
        try:
            total += (blobs / digest[:2] / digest / "data").stat().st_size
        except OSError:
            continue  # not (or no longer) in the store
    return total


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


def _digests(directory: Path) -> set[str]:
    """The revisions still linked: deleting a manifest removes its `link` file and leaves the directory."""
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    return {name for name in names if _is_hex(name) and (directory / name / "link").is_file()}


def _upload_bytes(directory: Path) -> int:
    total = 0
    try:
        uploads = list(os.scandir(directory))
    except OSError:
        return 0
    for upload in uploads:
        try:
            total += (Path(upload.path) / "data").stat().st_size
        except OSError:
            continue
    return total
