"""The registry's pure rules: scopes, references, save tags, storage configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opendepot.errors import InvalidArgument
from opendepot.registry.keys import Access
from opendepot.registry.operations import parse_scopes
from opendepot.registry.process import registry_environment, storage_config
from opendepot.registry.service import save_for_load, save_tags, tag_of, uses_registry


def test_scopes_parse_like_the_token_protocol() -> None:
    assert parse_scopes(["repository:abc:pull,push repository:def:pull", "registry:catalog:*", "junk"]) == [
        Access("repository", "abc", ("pull", "push")),
        Access("repository", "def", ("pull",)),
        Access("registry", "catalog", ("*",)),
    ]
    # The actions are after the last colon, and a name must be a repository's: a host:port in it is not.
    assert parse_scopes(["repository:host:5000/abc:pull"]) == []


def test_a_scope_is_a_repository_and_each_action_once() -> None:
    """Granted scopes are copied into the token: a 1 MiB name or 100,000 repeated actions made a 2.7 MiB
    token from a 1 MiB request."""
    assert parse_scopes(["repository:abc/x:" + ",".join(["pull", "push"] * 50_000)]) == [
        Access("repository", "abc/x", ("pull", "push"))
    ]
    longest = "abc/" + "x" * 251
    assert parse_scopes([f"repository:{longest}:pull"]) == [Access("repository", longest, ("pull",))]
    for name in ("abc/" + "x" * 252, "ABC", "abc/../def", "abc//def", "abc/", "a%2fb", "abc/-x"):
        assert parse_scopes([f"repository:{name}:pull"]) == [], name


def test_a_token_request_names_at_most_64_scopes() -> None:
    assert len(parse_scopes([" ".join(f"repository:abc/n{i}:pull" for i in range(64))])) == 64
    with pytest.raises(InvalidArgument, match="scope: at most 64 scopes"):
        parse_scopes(["repository:abc:pull"] * 60 + ["repository:a:pull repository:b:pull"] * 3)


def test_references_resolve_to_tags_of_this_project_only() -> None:
    assert tag_of("latest", "bbbbbbbbbb") == "latest"
    assert tag_of("127.0.0.1:8081/bbbbbbbbbb:v1", "bbbbbbbbbb") == "v1"
    assert tag_of("registry.depot.dev/bbbbbbbbbb:v1", "bbbbbbbbbb") == "v1"
    assert tag_of("bbbbbbbbbb:v1", "bbbbbbbbbb") == "v1"
    with pytest.raises(InvalidArgument, match="image_tags"):
        tag_of("127.0.0.1:8081/cccccccccc:v1", "bbbbbbbbbb")


def test_save_tags_follow_the_oci_grammar() -> None:
    options: list[dict[str, Any]] = [
        {"save": True, "saveTags": ["latest", "v1.2-rc_3", "latest"]},
        {"save_tags": ["x"]},
    ]
    assert save_tags(options) == ["latest", "v1.2-rc_3", "x"]
    for bad in ("-leading-dash", "has space", "a" * 129, "slash/no"):
        with pytest.raises(InvalidArgument, match=r"options\[0\]\.save_tags"):
            save_tags([{"saveTags": [bad]}])


def test_registry_use_and_save_for_load() -> None:
    assert not uses_registry([{"push": True}])
    assert uses_registry([{"load": True}]) and save_for_load([{"load": True}])
    assert uses_registry([{"save": True, "load": True}]) and not save_for_load([{"save": True, "load": True}])


def test_storage_configuration(tmp_path: Path) -> None:
    assert storage_config("", tmp_path) == {
        "filesystem": {"rootdirectory": str(tmp_path / "registry" / "storage")}
    }
    assert storage_config("/srv/images", tmp_path) == {"filesystem": {"rootdirectory": "/srv/images"}}
    assert storage_config(
        "s3://bucket/pre/fix?regionendpoint=http://minio:9000&forcepathstyle=true", tmp_path
    ) == {
        "s3": {
            "bucket": "bucket",
            "rootdirectory": "/pre/fix",
            "region": "us-east-1",
            "regionendpoint": "http://minio:9000",
            "forcepathstyle": "true",
        }
    }
    with pytest.raises(ValueError, match="unsupported"):
        storage_config("gs://bucket", tmp_path)


def test_the_s3_driver_is_started_without_aws_ca_bundle() -> None:
    environ = {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt", "PATH": "/usr/bin"}
    assert registry_environment(environ, "s3://bucket/prefix?regionendpoint=http://127.0.0.1:9000") == {
        "PATH": "/usr/bin"
    }
    assert registry_environment(environ, "") == environ
