"""The pull-through cache (`opendepot serve --registry-mirror URL`): a second local registry stands in for the
upstream (loopback only). `depot build` FROM an upstream image pulls it through the cache; once the upstream
is gone, another project's fresh builder still builds FROM it, served by the cache alone."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from opendepot.registry.seed import oci_layout
from tests.e2e.test_base_images import busybox_rootfs
from tests.e2e.test_builds import build, new_project
from tests.support.builds import builds_possible
from tests.support.server import Server, free_port

pytestmark = pytest.mark.skipif(
    builds_possible() is not None
    or shutil.which("skopeo") is None
    or shutil.which("docker-registry") is None,
    reason=str(builds_possible() or "skopeo and docker-registry are needed (./dev setup)"),
)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A plain registry without auth on a loopback port: the stand-in for a public upstream."""
    port = free_port()
    config = tmp_path / "upstream.json"
    config.write_text(
        json.dumps(
            {
                "version": "0.1",
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "upstream-storage")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://{host}/v2/", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    yield host, process
    process.terminate()
    process.wait(timeout=10)


def test_builders_pull_through_the_cache(
    upstream: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    host, upstream_process = upstream
    layout = tmp_path / "layout"
    oci_layout(busybox_rootfs(tmp_path / "rootfs.tar"), layout, "1")
    pushed = subprocess.run(
        ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{host}/library/tiny:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr

    mirror_port = free_port()
    srv = Server(
        data_dir=tmp_path / "data",
        database_url=None,
        extra_args=[
            "--registry-mirror",
            f"http://{host}",
            "--registry-mirror-listen",
            f"127.0.0.1:{mirror_port}",
        ],
    ).start()
    try:
        token = srv.admin_token
        context = tmp_path / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {host}/library/tiny:1\nRUN cat /etc/os-release\n")
        code, output = build(srv, token, new_project(srv, token, "first"), context)
        assert code == 0, output
        assert "seeded by a test" in output, output
        cached = srv.data_dir / "registry-mirror" / "storage" / "docker" / "registry" / "v2" / "repositories"
        assert (cached / "library" / "tiny").is_dir(), "the image did not pass through the cache"

        upstream_process.terminate()
        upstream_process.wait(timeout=10)
        code, output = build(srv, token, new_project(srv, token, "second"), context)
        assert code == 0, output
        assert "seeded by a test" in output, output
    finally:
        srv.stop()


def test_a_bad_mirror_url_is_refused(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "data", database_url=None, extra_args=["--registry-mirror", "ftp://x/y"])
    with pytest.raises(RuntimeError, match="registry-mirror"):
        srv.start(timeout=15)
