from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from opendepot.server.config import ConfigError, add_arguments, resolve


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    config_file = tmp_path / "opendepot.toml"
    config_file.write_text(
        'listen = "0.0.0.0:1"\nlog_level = "debug"\nregions = ["a", "b"]\ndefault_region = "a"\n'
    )
    env = {"OPENDEPOT_LISTEN": "0.0.0.0:2", "OPENDEPOT_WORKERS": "3"}
    config = resolve(
        parse("--config", str(config_file), "--listen", "127.0.0.1:3", "--data-dir", str(tmp_path)), env
    )
    assert config.api.listen == "127.0.0.1:3" and config.sources["listen"] == "flag"
    assert config.server.workers == 3 and config.sources["workers"] == "env"
    assert config.server.log_level == "DEBUG" and config.sources["log_level"] == "file"
    assert config.projects.regions == ("a", "b")
    assert config.sources["tls_cert"] == "default"
    assert config.store.database_url == f"sqlite:///{tmp_path.resolve() / 'opendepot.db'}"


def test_env_config_file_and_defaults(tmp_path: Path) -> None:
    config = resolve(parse(), {"OPENDEPOT_DATA_DIR": str(tmp_path), "OPENDEPOT_REGIONS": "x, y"})
    assert config.data_dir == tmp_path.resolve()
    assert config.projects.regions == ("x", "y")
    assert config.projects.default_region == "x"
    assert config.api.host_port == ("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--tls-cert", "a.pem"], "go together"),
        (["--default-region", "mars"], "not among"),
        (["--listen", "nope"], "HOST:PORT"),
        (["--workers", "0"], "between 1 and 64"),
        (["--regions", ","], "at least one region"),
        (["--config", "/nonexistent.toml"], "cannot read"),
    ],
)
def test_bad_configuration_is_refused(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        resolve(parse(*argv), {})


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text("lissen = 1\n")
    with pytest.raises(ConfigError, match="lissen"):
        resolve(parse("--config", str(config_file)), {})


def test_oidc_issuers_from_flags_env_and_off() -> None:
    local = "http://127.0.0.1:9000/github"
    flags = resolve(
        parse("--oidc-issuer", f"github={local}", "--oidc-issuer", "gitlab=https://git.example/"), {}
    )
    assert flags.oidc.issuers["github"] == local
    assert flags.oidc.issuers["gitlab"] == "https://git.example"
    assert flags.oidc.issuers["buildkite"] == "https://agent.buildkite.com"
    env = resolve(parse(), {"OPENDEPOT_OIDC_ISSUERS": f"github={local},circleci=https://c.example/org"})
    assert env.oidc.issuers["github"] == local and env.oidc.issuers["circleci"] == "https://c.example/org"
    assert resolve(parse("--oidc-issuer", "off"), {}).oidc.issuers == {}
    default = resolve(parse("--public-url", "https://builds.example"), {})
    assert default.oidc.audiences == ("https://depot.dev", "https://builds.example")
    for bad in ("jenkins=https://x", "github", "github=ftp://x"):
        with pytest.raises(ConfigError, match="oidc-issuer"):
            resolve(parse("--oidc-issuer", bad), {})
