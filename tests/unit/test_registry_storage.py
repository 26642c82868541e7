"""What a project's repositories keep in the registry's filesystem storage, read from distribution's layout:
each manifest still linked (tagged or not) with the config and layers it names, each blob once; unfinished
uploads; repositories beneath the project; nothing of another project's; a deleted manifest's blobs count
nothing; blobs uploaded since the last collection that no manifest of the project names count, apart."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from opendepot.registry.storage import Kept, filesystem_root, kept_bytes


def blob(root: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    path = root / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return digest


def uploaded(root: Path, repository: str, digest: str, at: float) -> None:
    """The blob's link in the repository, as distribution writes it when an upload completes, dated `at`."""
    link = root / "docker/registry/v2/repositories" / repository / "_layers/sha256" / digest / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(f"sha256:{digest}")
    os.utime(link, (at, at))


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
    # Blobs: two manifests, the config, two layers, the upload.
    assert kept_bytes(tmp_path, "p1") == Kept(1000 + 100 + 5000 + first + second + 300, blobs=6)
    assert kept_bytes(tmp_path, "p2") == Kept(
        70000 + 100 + manifest(tmp_path, "p2", config, theirs)[1], blobs=3
    )
    assert kept_bytes(tmp_path, "p3") == Kept(0)  # nothing pushed yet


def test_only_a_filesystem_storage_is_read(tmp_path: Path) -> None:
    assert filesystem_root("", tmp_path) == tmp_path
    assert filesystem_root("/srv/registry", tmp_path) == Path("/srv/registry")
    assert filesystem_root("file:///srv/registry", tmp_path) == Path("/srv/registry")
    assert filesystem_root("s3://bucket/root?region=eu-west-1", tmp_path) is None


def test_blobs_no_manifest_of_the_project_names_count_until_a_collection(tmp_path: Path) -> None:
    collected = 1_700_000_000.0
    layer, config = blob(tmp_path, b"l" * 1000), blob(tmp_path, b"c" * 100)
    alone, earlier = blob(tmp_path, b"a" * 7000), blob(tmp_path, b"e" * 20000)
    freed, theirs = blob(tmp_path, b"f" * 300), blob(tmp_path, b"t" * 50)
    _digest, size = manifest(tmp_path, "p1", config, layer)
    for digest in (layer, config, alone, freed):
        uploaded(tmp_path, "p1", digest, collected + 10)
    uploaded(tmp_path, "p1/beneath", theirs, collected + 10)  # a repository beneath counts too
    # Linked before the last collection and still stored: the collection kept it, so some manifest
    # (another project's) names it.
    uploaded(tmp_path, "p1", earlier, collected - 10)
    uploaded(tmp_path, "p1", blob(tmp_path, b"gone" * 9), collected + 10)
    (tmp_path / "docker/registry/v2/blobs/sha256").joinpath(  # a link whose blob the store lost
        hashlib.sha256(b"gone" * 9).hexdigest()[:2], hashlib.sha256(b"gone" * 9).hexdigest(), "data"
    ).unlink()
    # A deleted manifest's blobs: freed by the delete that asked for a collection, not counted.
    deleted, _size = manifest(tmp_path, "p1", config, freed)
    (tmp_path / "docker/registry/v2/repositories/p1/_manifests/revisions/sha256" / deleted / "link").unlink()
    named = 1000 + 100 + size
    # Blobs: the manifest, its config and layer; alone and theirs unnamed (not the one the store lost).
    assert kept_bytes(tmp_path, "p1", collected) == Kept(named + 7000 + 50, 7000 + 50, 5, 2)
    # No collection ever ran: every linked blob no manifest names counts.
    assert kept_bytes(tmp_path, "p1", None) == Kept(named + 7000 + 50 + 20000, 7000 + 50 + 20000, 6, 3)
    assert kept_bytes(tmp_path, "p2", collected) == Kept(0)  # another project's links are not its own
