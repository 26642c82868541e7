"""Base images made here (`opendepot images seed`): a root filesystem written as an OCI image and pushed to
`<registry>/<project>/<name>:<tag>` with the registry's token auth, then used by `depot build` as its FROM
image through the project's own builder; other organizations' tokens cannot pull it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.e2e.test_builds import build, new_project
from tests.e2e.test_opendepot_cli import opendepot
from tests.support.builds import BUSYBOX, builds_possible
from tests.support.server import Server

pytestmark = pytest.mark.skipif(
    builds_possible() is not None or shutil.which("skopeo") is None,
    reason=str(builds_possible() or "skopeo is not installed (./dev setup)"),
)


def busybox_rootfs(path: Path) -> Path:
    """A root filesystem tarball: busybox as /bin/busybox and /bin/sh, and an /etc/os-release to read."""
    root = path.parent / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "os-release").write_text('PRETTY_NAME="seeded by a test"\n')
    with tarfile.open(path, "w") as tar:
        for entry in ("bin", "etc"):
            tar.add(root / entry, arcname=entry)
    return path


def docker_config(directory: Path, registry: str, token: str) -> dict[str, str]:
    """The depot CLI hands BuildKit the registry credentials of the local Docker config."""
    directory.mkdir()
    secret = base64.b64encode(f"x-token:{token}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {registry: {"auth": secret}}}))
    return {"DOCKER_CONFIG": str(directory)}


def test_seeded_image_is_a_from_image_for_depot_build(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    _org, token = org
    project = new_project(server, token, "seeded")
    rootfs = busybox_rootfs(tmp_path / "rootfs.tar")
    seeded = opendepot(
        server,
        token,
        "images",
        "seed",
        project,
        "--registry",
        server.registry_host,
        "--rootfs",
        str(rootfs),
        "--name",
        "base/busybox",
        "--tag",
        "v1",
        "--insecure",
        "--json",
    )
    assert seeded.returncode == 0, seeded.stderr
    result = json.loads(seeded.stdout)
    reference = f"{server.registry_host}/{project}/base/busybox:v1"
    assert result["image"] == reference
    assert result["digest"].startswith("sha256:")

    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--creds", f"x-token:{token}", f"docker://{reference}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == result["digest"]

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {reference}\nRUN cat /etc/os-release && echo ran-on-seeded\n")
    env = docker_config(tmp_path / "docker", server.registry_host, token)
    code, output = build(server, token, project, context, env=env)
    assert code == 0, output
    assert "seeded by a test" in output and "ran-on-seeded" in output, output

    # Another organization's token gets no pull access to this project's repositories.
    _other, stranger = server.new_organization()
    denied = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--creds",
            f"x-token:{stranger}",
            f"docker://{reference}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert denied.returncode != 0
    assert "denied" in denied.stderr.lower() or "unauthorized" in denied.stderr.lower(), denied.stderr


def test_seed_names_what_is_wrong(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    project = new_project(server, token, "seed-errors")
    missing = opendepot(server, token, "images", "seed", "bcdfghjklm", "--registry", "127.0.0.1:1")
    assert missing.returncode == 1
    assert "not_found" in missing.stderr, missing.stderr
    bad_name = opendepot(
        server,
        token,
        "images",
        "seed",
        project,
        "--registry",
        server.registry_host,
        "--rootfs",
        str(busybox_rootfs(tmp_path / "rootfs.tar")),
        "--name",
        "Not/Valid",
    )
    assert bad_name.returncode == 1
    assert "--name" in bad_name.stderr, bad_name.stderr
    no_rootfs = opendepot(
        server,
        token,
        "images",
        "seed",
        project,
        "--registry",
        server.registry_host,
        "--rootfs",
        "/nonexistent",
    )
    assert no_rootfs.returncode == 1
    assert "--rootfs" in no_rootfs.stderr, no_rootfs.stderr
