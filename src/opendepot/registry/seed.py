"""Base images made here, for machines that reach no public image registry: a Debian root filesystem from
Debian's own packages (`mmdebstrap`, from any Debian mirror, an internal one included), or a root filesystem
tarball the operator brings, written as a one-layer OCI image layout and copied into a project's registry
with `skopeo` as `<registry>/<project>/<name>:<tag>` (`opendepot images seed`).

Nothing here needs the server: the registry's token auth takes the opendepot token as the password."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from opendepot.files import write_private

DEFAULT_MIRROR = "http://deb.debian.org/debian"
REGISTRY_USER = "x-token"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What Debian's own slim images leave out: documentation, manual pages and translations.
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
# distribution's repository name components (lower case, separators inside).
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1 << 20

Runner = Callable[[Sequence[str]], None]


class SeedError(Exception):
    """A seed step failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Target:
    registry: str
    project_id: str
    name: str
    tag: str

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.project_id}/{self.name}:{self.tag}"


def target(registry: str, project_id: str, name: str, tag: str) -> Target:
    """Checks the parts of `<registry>/<project>/<name>:<tag>`; a SeedError names the bad one."""
    registry = registry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
    if not registry or "/" in registry:
        raise SeedError(f"--registry: {registry!r} is not a host[:port]")
    if not _NAME.match(name):
        raise SeedError(f"--name: {name!r} is not a repository name (lower case, e.g. debian)")
    if not _TAG.match(tag):
        raise SeedError(f"--tag: {tag!r} is not a tag")
    return Target(registry, project_id, name, tag)


def run_checked(command: Sequence[str]) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SeedError(
            f"{command[0]} failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}"
        )


def debian_rootfs(
    suite: str, mirror: str, dest: Path, *, include: Sequence[str] = (), runner: Runner = run_checked
) -> None:
    """A minimal Debian (`minbase`: apt, dpkg and the essential packages) as a tarball, without docs,
    manual pages and translations, from the given mirror; the image's apt sources point at that mirror."""
    if shutil.which("mmdebstrap") is None:
        raise SeedError("mmdebstrap is not installed (apt-get install mmdebstrap), or give --rootfs")
    command = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar"]
    command += [f"--dpkgopt=path-exclude={pattern}" for pattern in SLIM_EXCLUDES]
    command += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    command += [f"--include={','.join(include)}"] if include else []
    # apt's caches and lists are left out of the image, as Debian's own images do.
    command += ['--aptopt=Acquire::Languages "none"', "--customize-hook=rm -rf $1/var/lib/apt/lists/*"]
    runner([*command, suite, str(dest), mirror])


def _copy_digesting(source: BinaryIO, sink: BinaryIO | gzip.GzipFile) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        sink.write(chunk)
    return f"sha256:{digest.hexdigest()}"


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return digest, len(data)


def _descriptor(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def oci_layout(
    rootfs: Path,
    layout: Path,
    tag: str,
    *,
    cmd: Sequence[str] = ("bash",),
    created: datetime | None = None,
    source: str = "",
) -> str:
    """Writes a one-layer OCI image layout for a root filesystem tarball (uncompressed); returns the
    manifest's digest. The layer is gzip-compressed, its diff id the digest of the tarball itself."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    compressed = blobs / "layer.partial"
    # mtime=0: the same tarball always gives the same layer digest.
    with (
        rootfs.open("rb") as raw,
        compressed.open("wb") as out,
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as zipped,
    ):
        diff_id = _copy_digesting(raw, zipped)
    layer_hash = hashlib.sha256()
    with compressed.open("rb") as written:
        while chunk := written.read(_CHUNK):
            layer_hash.update(chunk)
    layer_digest = f"sha256:{layer_hash.hexdigest()}"
    layer_size = compressed.stat().st_size
    compressed.rename(blobs / layer_hash.hexdigest())
    moment = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": moment,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [PATH], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": moment, "created_by": f"opendepot images seed {source}".strip()}],
    }
    config_digest, config_size = _blob(layout, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config_digest, config_size),
        "layers": [_descriptor(OCI_LAYER, layer_digest, layer_size)],
    }
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            _descriptor(
                OCI_MANIFEST,
                manifest_digest,
                manifest_size,
                annotations={"org.opencontainers.image.ref.name": tag},
                platform={"architecture": "amd64", "os": "linux"},
            )
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def auth_file(path: Path, registry: str, token: str) -> Path:
    """A containers-auth.json for skopeo (mode 0600), so that the token is never on a command line."""
    secret = base64.b64encode(f"{REGISTRY_USER}:{token}".encode()).decode()
    write_private(path, json.dumps({"auths": {registry: {"auth": secret}}}))
    return path


def push(
    layout: Path, tag: str, destination: Target, token: str, *, insecure: bool, runner: Runner = run_checked
) -> None:
    if shutil.which("skopeo") is None:
        raise SeedError("skopeo is not installed (apt-get install skopeo)")
    with tempfile.TemporaryDirectory(prefix="opendepot-seed-auth-") as tmp:
        authfile = auth_file(Path(tmp) / "auth.json", destination.registry, token)
        runner(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"--dest-authfile={authfile}",
                f"--dest-tls-verify={'false' if insecure else 'true'}",
                f"oci:{layout}:{tag}",
                f"docker://{destination.reference}",
            ]
        )


def seed(
    destination: Target,
    token: str,
    *,
    rootfs: Path | None = None,
    suite: str = "bookworm",
    mirror: str = DEFAULT_MIRROR,
    include: Sequence[str] = (),
    insecure: bool = False,
    work_dir: Path | None = None,
) -> str:
    """Makes (or takes) the root filesystem, writes the image, pushes it; returns the manifest digest."""
    with tempfile.TemporaryDirectory(prefix="opendepot-seed-", dir=work_dir) as tmp:
        work = Path(tmp)
        if rootfs is None:
            rootfs = work / "rootfs.tar"
            debian_rootfs(suite, mirror, rootfs, include=include)
            source = f"debian {suite} from {mirror}"
        else:
            source = rootfs.name
        digest = oci_layout(rootfs, work / "layout", destination.tag, source=source)
        push(work / "layout", destination.tag, destination, token, insecure=insecure)
        return digest
