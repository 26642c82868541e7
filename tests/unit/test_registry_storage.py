"""What a project's repositories keep in the registry's filesystem storage, read from distribution's layout:
each manifest still linked (tagged or not) with the config and layers it names, each blob once; unfinished
uploads; repositories beneath the project; nothing of another project's; a deleted manifest's blobs, and
blobs no manifest names, count nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from opendepot.registry.storage import filesystem_root, kept_bytes


def blob(root: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    path = root / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return digest


def manifest(root: Path, repository: str, config: str, *layers: str) -> tuple[str, int]:
    """A manifest naming the blobs, stored and linked as a revision of the repository: (digest, size)."""
    document = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"digest": f"sha256:{config}"},
            "layers": [{"digest": f"sha256:{d}"} for d in layers],
        }
    ).encode()
    digest = blob(root, document)
    link = (
        root
        / "docker/registry/v2/repositories"
        / repository
        / "_manifests/revisions/sha256"
        / digest
        / "link"
    )
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(f"sha256:{digest}")
    return digest, len(document)


def test_a_project_counts_the_manifests_it_keeps_tagged_or_not(tmp_path: Path) -> None:
    layer, config = blob(tmp_path, b"l" * 1000), blob(tmp_path, b"c" * 100)
    base_layer, theirs, orphan = (
        blob(tmp_path, b"b" * 5000),
        blob(tmp_path, b"t" * 70000),
        blob(tmp_path, b"o" * 9),
    )
    _by_digest, first = manifest(tmp_path, "p1", config, layer)  # pushed by digest: no tag names it
    _beneath, second = manifest(tmp_path, "p1/debian", config, base_layer, layer)  # a repository beneath
    manifest(tmp_path, "p2", config, theirs)  # another project's
    deleted, _size = manifest(tmp_path, "p1", config, orphan)
    # Deleted: distribution removes the link and leaves its directory.
    (tmp_path / "docker/registry/v2/repositories/p1/_manifests/revisions/sha256" / deleted / "link").unlink()
    upload = tmp_path / "docker/registry/v2/repositories/p1/_uploads/8b1c/data"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"u" * 300)  # never finished
    assert kept_bytes(tmp_path, "p1") == 1000 + 100 + 5000 + first + second + 300
    assert kept_bytes(tmp_path, "p2") == 70000 + 100 + manifest(tmp_path, "p2", config, theirs)[1]
    assert kept_bytes(tmp_path, "p3") == 0  # nothing pushed yet


def test_only_a_filesystem_storage_is_read(tmp_path: Path) -> None:
    assert filesystem_root("", tmp_path) == tmp_path
    assert filesystem_root("/srv/registry", tmp_path) == Path("/srv/registry")
    assert filesystem_root("file:///srv/registry", tmp_path) == Path("/srv/registry")
    assert filesystem_root("s3://bucket/root?region=eu-west-1", tmp_path) is None
