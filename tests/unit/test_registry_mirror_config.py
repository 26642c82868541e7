"""The pull-through cache in buildkitd.toml and its upstream URL check."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from opendepot.buildkit.config import buildkitd_toml
from opendepot.datadir import DataDir
from opendepot.registry.mirror import MirrorSettings, check_upstream, mirror_config


def toml(insecure: tuple[str, ...], mirrors: dict[str, str]) -> dict[str, object]:
    text = buildkitd_toml(
        state_dir=Path("/s"),
        socket=Path("/s.sock"),
        keep_bytes=1,
        keep_days=0,
        cgroup_parent=None,
        insecure_registries=insecure,
        mirrors=mirrors,
    )
    return tomllib.loads(text)


def test_each_registry_host_is_one_table() -> None:
    # The upstream is also a plain-HTTP host here (a local stand-in): one table carries both settings.
    parsed = toml(("127.0.0.1:8081", "127.0.0.1:9000"), {"127.0.0.1:9000": "127.0.0.1:8082"})
    assert parsed["registry"] == {
        "127.0.0.1:8081": {"http": True},
        "127.0.0.1:9000": {"http": True, "mirrors": ["127.0.0.1:8082"]},
        "127.0.0.1:8082": {"http": True},
    }


def test_docker_hub_is_named_as_image_references_name_it() -> None:
    settings = MirrorSettings(
        "docker-registry", "https://registry-1.docker.io", "127.0.0.1:8082", DataDir(Path("/d"))
    )
    assert settings.upstream_host == "docker.io"
    assert mirror_config(settings)["proxy"] == {"remoteurl": "https://registry-1.docker.io"}
    assert toml((), {settings.upstream_host: settings.listen})["registry"]["docker.io"] == {  # type: ignore[index]
        "mirrors": ["127.0.0.1:8082"]
    }


@pytest.mark.parametrize(
    "url", ["ftp://x", "registry-1.docker.io", "https://host/path", "https://h?x=1", "http://"]
)
def test_upstream_must_be_a_registry_url(url: str) -> None:
    with pytest.raises(ValueError, match="--registry-mirror"):
        check_upstream(url)


def test_upstream_keeps_scheme_and_host() -> None:
    assert check_upstream(" https://mirror.example:5000/ ") == "https://mirror.example:5000"
