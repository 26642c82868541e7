"""Server configuration: flags > OPENDEPOT_* environment variables > config file (TOML) > defaults.

Every knob is declared once in OPTIONS; `opendepot serve --help` is generated from it."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from opendepot.builders.backend import DEFAULT_DISK_MAX_BYTES
from opendepot.datadir import DataDir
from opendepot.oidc.providers import DEFAULT_ISSUERS
from opendepot.registry.mirror import check_upstream
from opendepot.store.engine import sqlite_url


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "opendepot")


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {value!r}")


def _csv(value: str | list[str]) -> tuple[str, ...]:
    items = value if isinstance(value, list) else value.split(",")
    return tuple(i.strip() for i in items if i.strip())


def _issuers(value: str | list[str] | dict[str, str]) -> dict[str, str]:
    """`github=https://…,circleci=https://…/org` over the defaults; `off` for none."""
    if isinstance(value, dict):
        return dict(value)
    items = _csv(value)
    if items == ("off",):
        return {}
    issuers = dict(DEFAULT_ISSUERS)
    for item in items:
        provider, sep, url = item.partition("=")
        if not sep or provider not in DEFAULT_ISSUERS or not url.startswith(("https://", "http://")):
            raise ConfigError(
                f"--oidc-issuer: expected PROVIDER=URL with PROVIDER one of {', '.join(DEFAULT_ISSUERS)}, "
                f"got {item!r}"
            )
        issuers[provider] = url.rstrip("/")
    return issuers


@dataclass(frozen=True)
class Option:
    """How one setting is spelled outside: `--flag`, `OPENDEPOT_NAME`, TOML key `name`, and its `--help`."""

    name: str
    help: str
    default: Callable[[], Any]
    parse: Callable[[Any], Any] = str
    metavar: str | None = None
    # The flag may be given several times; the values are joined as if comma-separated.
    repeatable: bool = False
    # Another spelling of the flag (the singular of a repeatable one).
    alias: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "OPENDEPOT_" + self.name.upper()


def setting(
    help: str,
    default: Callable[[], Any],
    *,
    parse: Callable[[Any], Any] = str,
    metavar: str | None = None,
    name: str | None = None,
    repeatable: bool = False,
    alias: str | None = None,
) -> Any:
    """Declares one option as a field of its subsystem's settings. `name` is the flag/env/TOML name when it
    is not the field's own (names are flat and unique across groups, as users have always spelled them)."""
    return field(
        metadata={"option": (name, help, default, parse, metavar, repeatable, alias)},
    )


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path = setting(
        "directory for the database, caches and generated secrets", _default_data_dir, metavar="DIR"
    )
    log_level: str = setting("DEBUG, INFO, WARNING or ERROR", lambda: "INFO", metavar="LEVEL")
    workers: int = setting(
        "API worker processes sharing the port (default: the number of CPUs, at most 4)",
        lambda: min(os.cpu_count() or 1, 4),
        parse=int,
        metavar="N",
    )


@dataclass(frozen=True)
class ApiSettings:
    listen: str = setting(
        "address for the API (HTTP/1.1 and h2c on one port; h2 by ALPN with TLS)",
        lambda: "127.0.0.1:8080",
        metavar="HOST:PORT",
    )
    tls_cert: Path | None = setting(
        "PEM certificate for serving the API over TLS", lambda: None, metavar="FILE"
    )
    tls_key: Path | None = setting("PEM private key for --tls-cert", lambda: None, metavar="FILE")
    public_url: str = setting(
        "URL under which users reach this server (build links); default: from --listen",
        lambda: None,
        metavar="URL",
    )

    @property
    def host_port(self) -> tuple[str, int]:
        return _split(self.listen)

    @property
    def url(self) -> str:
        """Where the registry reaches this server's API (notifications): the listen address itself."""
        return _url_of(self.listen, bool(self.tls_cert))


@dataclass(frozen=True)
class StoreSettings:
    database_url: str = setting(
        "SQLAlchemy URL; default: SQLite in the data dir. PostgreSQL: postgresql+psycopg://user:pass@host/db",
        lambda: None,
        metavar="URL",
    )

    secret_key: str = setting(
        "key sealing the secrets kept in the store (CA and signing keys): at least 32 random characters, the "
        "same on every node sharing the store (prefer the variable or --secret-key-file to a flag)",
        lambda: "",
        metavar="KEY",
    )
    secret_key_file: Path = setting(
        "file holding --secret-key (default: secret-key in the data dir, made on the first start)",
        lambda: None,
        metavar="FILE",
    )


@dataclass(frozen=True)
class ProjectSettings:
    regions: tuple[str, ...] = setting(
        "comma-separated region ids projects may use",
        lambda: ("us-east-1", "eu-central-1"),
        parse=_csv,
        metavar="LIST",
    )
    default_region: str = setting(
        "region for projects created without one (us-east-1, or the first of --regions if it lacks that)",
        lambda: "us-east-1",
        metavar="REGION",
    )


@dataclass(frozen=True)
class BuilderSettings:
    buildkitd: str = setting(
        "the buildkitd binary (default: buildkitd next to this Python, then on PATH)",
        lambda: None,
        metavar="PATH",
    )
    lease_timeout: float = setting(
        "seconds without a heartbeat before a build's machine lease is released",
        lambda: 300.0,
        parse=float,
        metavar="SECONDS",
    )
    idle_timeout: float = setting(
        "seconds a builder with no leases keeps running (its cache always stays)",
        lambda: 120.0,
        parse=float,
        metavar="SECONDS",
        name="builder_idle_timeout",
    )
    build_timeout: float = setting(
        "seconds a build may run before the server ends it and frees its builder (0: no limit)",
        lambda: 0.0,
        parse=float,
        metavar="SECONDS",
    )
    max_builds_per_minute: int = setting(
        "builds one organization may create a minute; past it CreateBuild is refused a while (0: no bound)",
        lambda: 1000,
        parse=int,
        metavar="N",
    )
    build_retention_days: float = setting(
        "days a finished build is kept, with its steps and logs, before it is deleted (0: kept forever;"
        " usage reports cover only the builds kept)",
        lambda: 0.0,
        parse=float,
        metavar="DAYS",
    )
    build_history_quota_mib: int = setting(
        "MiB of step logs and status reports one organization's builds may keep; past it its oldest finished"
        " builds are deleted, its newest always kept (0: no quota)",
        lambda: 0,
        parse=int,
        metavar="MIB",
    )
    max_builders_per_org: int = setting(
        "builders one organization may run at once; past it a build waits for one (0: no cap)",
        lambda: 16,
        parse=int,
        metavar="N",
    )
    max_builders: int = setting(
        "builders this server may run at once, all organizations together; past it a build waits (0: no cap)",
        lambda: 0,
        parse=int,
        metavar="N",
    )
    usage_sample_seconds: float = setting(
        "how often each running builder's cache size is sampled for usage figures",
        lambda: 60.0,
        parse=float,
        metavar="SECONDS",
    )
    unsafe_builders: bool = setting(
        "run builders as host root on the host network, without the sandbox (never for untrusted code)",
        lambda: False,
        parse=_bool,
        metavar="BOOL",
    )
    rootlesskit: str | None = setting(
        "the RootlessKit (>= 2) binary of sandboxed builders (default: next to buildkitd, then on PATH)",
        lambda: None,
        metavar="PATH",
    )
    pids_max: int = setting(
        "most processes and threads one sandboxed builder (buildkitd and its RUN steps) may have",
        lambda: 1024,
        parse=int,
        metavar="N",
        name="builder_pids_max",
    )
    memory_limit_mib: int = setting(
        "caps every builder's memory (buildkitd and its RUN steps) below its hardware size; 0: no cap",
        lambda: 0,
        parse=int,
        metavar="MIB",
        name="builder_memory_limit_mib",
    )
    disk_max_mib: int = setting(
        "the largest cache volume a builder gets (its project's cache policy plus a quarter, at most this): "
        "what one project's builds may write on the server's disk (or a Kubernetes volume)",
        lambda: DEFAULT_DISK_MAX_BYTES >> 20,
        parse=int,
        metavar="MIB",
        name="builder_disk_max_mib",
    )


@dataclass(frozen=True)
class KubernetesSettings:
    """Builders as pods (`--builders kubernetes`; builders/kubernetes.py)."""

    backend: str = setting(
        "where builders run: local (buildkitd processes on this host) or kubernetes (pods in --namespace)",
        lambda: "local",
        metavar="BACKEND",
        name="builders",
    )
    kubeconfig: str | None = setting(
        "kubeconfig for --builders kubernetes (default: the pod's service account)",
        lambda: None,
        metavar="FILE",
    )
    namespace: str = setting(
        "Kubernetes namespace opendepot creates builder pods, volumes and policies in",
        lambda: "opendepot-builders",
        metavar="NS",
    )
    image: str = setting(
        "buildkitd image of builder pods (README: Kubernetes, building it with opendepot)",
        lambda: "opendepot.local/buildkitd:v0.34.2",
        metavar="IMAGE",
        name="builder_image",
    )
    storage_class: str | None = setting(
        "StorageClass of builder cache volumes (default: the cluster's default class)",
        lambda: None,
        metavar="NAME",
    )
    gateway_cidrs: tuple[str, ...] = setting(
        "addresses the gateway reaches builder pods from (NetworkPolicy ingress; comma-separated CIDRs)",
        lambda: (),
        parse=_csv,
        metavar="LIST",
    )
    registry_cidrs: tuple[str, ...] = setting(
        "addresses of the registry builder pods push to (NetworkPolicy egress; comma-separated CIDRs)",
        lambda: (),
        parse=_csv,
        metavar="LIST",
    )


@dataclass(frozen=True)
class GatewaySettings:
    listen: str = setting(
        "address of the BuildKit gateway (mTLS) that clients dial",
        lambda: "127.0.0.1:8443",
        metavar="HOST:PORT",
        name="buildkit_listen",
    )
    host: str = setting(
        "host name or IP that clients use to reach the gateway (default: its listen host)",
        lambda: None,
        metavar="HOST",
        name="buildkit_host",
    )
    status_tap: bool = setting(
        "record build steps and logs from the BuildKit traffic through the gateway (true/false)",
        lambda: True,
        parse=_bool,
        metavar="BOOL",
    )
    separate_process: bool = setting(
        "run the gateway's TLS and relaying in a process of its own, beside the supervisor's loops"
        " (true/false; local builders only)",
        lambda: True,
        parse=_bool,
        metavar="BOOL",
        name="gateway_process",
    )
    build_log_limit_mib: int = setting(
        "MiB of step logs kept per build (a line counts as at least 64 bytes); past it a marker line says so",
        lambda: 10,
        parse=int,
        metavar="MIB",
    )

    @property
    def host_port(self) -> tuple[str, int]:
        return _split(self.listen)


@dataclass(frozen=True)
class RegistrySettings:
    binary: str = setting(
        "the registry binary (CNCF distribution; default: docker-registry on PATH); 'off' runs none",
        lambda: None,
        metavar="PATH",
        name="registry",
    )
    listen: str = setting(
        "address the registry listens on (plain HTTP; put TLS in front for other hosts)",
        # Not 5000: Debian's docker-registry package may run its own service there.
        lambda: "127.0.0.1:8081",
        metavar="HOST:PORT",
        name="registry_listen",
    )
    host: str = setting(
        "registry host[:port] in image references, as builders and clients reach it "
        "(default: --registry-listen)",
        lambda: None,
        metavar="HOST",
        name="registry_host",
    )
    storage: str = setting(
        "where images are kept: a directory (default: the data dir) or s3://BUCKET/PREFIX?region=…&regionendpoint=…",
        lambda: "",
        metavar="URL",
        name="registry_storage",
    )
    gc_idle_seconds: float = setting(
        "after deletes, garbage-collect once no build runs and nothing was pushed for this long",
        lambda: 300.0,
        parse=float,
        metavar="SECONDS",
        name="registry_gc_idle_seconds",
    )
    quota_mib: int = setting(
        "MiB of images a project may keep in the registry; a push to a project at or over it is refused"
        " until images are deleted (0: no quota)",
        lambda: 0,
        parse=int,
        metavar="MIB",
        name="registry_quota_mib",
    )
    quota_blobs: int = setting(
        "with --registry-quota-mib, the blobs (manifests, configs, layers, unfinished uploads) a project may "
        "keep in the registry's filesystem storage, so that tiny blobs cannot use up its inodes within the "
        "bytes "
        "(0: one per 64 KiB of the quota, at least 10000)",
        lambda: 0,
        parse=int,
        metavar="N",
        name="registry_quota_blobs",
    )
    mirror: str = setting(
        "an upstream registry URL (e.g. https://registry-1.docker.io) to serve as a pull-through cache; "
        "builders use it as that registry's mirror",
        lambda: "",
        metavar="URL",
        name="registry_mirror",
    )
    mirror_listen: str = setting(
        "address the pull-through cache listens on (plain HTTP)",
        lambda: "127.0.0.1:8082",
        metavar="HOST:PORT",
        name="registry_mirror_listen",
    )

    @property
    def url(self) -> str:
        """Where opendepot itself reaches the registry."""
        return _url_of(self.listen, False)


@dataclass(frozen=True)
class OidcSettings:
    issuers: dict[str, str] = setting(
        "CI OIDC issuers as PROVIDER=URL (github, buildkite, circleci, gitlab); repeatable or "
        "comma-separated; each replaces that provider's default (the real providers' issuers); "
        "'off' accepts no CI tokens",
        lambda: dict(DEFAULT_ISSUERS),
        parse=_issuers,
        metavar="PROVIDER=URL",
        repeatable=True,
        alias="--oidc-issuer",
        name="oidc_issuers",
    )
    audiences: tuple[str, ...] = setting(
        "audiences a CI token may carry (comma-separated; default: https://depot.dev and --public-url)",
        lambda: None,
        parse=_csv,
        metavar="LIST",
        name="oidc_audiences",
    )
    replay_window_seconds: float = setting(
        "how long after its first use a CI token is still accepted (one CLI run); later uses are replays",
        lambda: 120.0,
        parse=float,
        metavar="SECONDS",
        name="oidc_replay_window_seconds",
    )


@dataclass(frozen=True)
class LoginSettings:
    timeout_seconds: float = setting(
        "how long a `depot login` waits for approval",
        lambda: 300.0,
        parse=float,
        metavar="SECONDS",
        name="login_timeout_seconds",
    )


@dataclass(frozen=True)
class Config:
    """Every setting of `opendepot serve`, one group per subsystem. A new option is one `setting(...)` field
    in its group: its flag, OPENDEPOT_* variable, TOML key and `--help` line all come from that field."""

    server: ServerSettings
    api: ApiSettings
    store: StoreSettings
    projects: ProjectSettings
    builders: BuilderSettings
    kubernetes: KubernetesSettings
    gateway: GatewaySettings
    registry: RegistrySettings
    oidc: OidcSettings
    login: LoginSettings
    # Where each value came from (flag, env, file, default), by option name.
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def paths(self) -> DataDir:
        return DataDir(self.server.data_dir)


# The groups in `--help` order; an option's place in its group is its place in the help.
GROUPS: dict[str, type[Any]] = {
    name: kind for name, kind in get_type_hints(Config).items() if name != "sources"
}


def _options() -> list[tuple[str, str, Option]]:
    """(group, field, option) for every declared setting."""
    found = []
    for group_name, group in GROUPS.items():
        for f in fields(group):
            name, help_, default, parse, metavar, repeatable, alias = f.metadata["option"]
            option = Option(name or f.name, help_, default, parse, metavar, repeatable, alias)
            found.append((group_name, f.name, option))
    return found


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _host_of(address: str) -> str:
    host = address.rpartition(":")[0].strip("[]")
    # A wildcard listen address is no address to hand out: advertise loopback unless told otherwise.
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host  # noqa: S104


def _host_port_of(listen: str) -> str:
    return f"{_host_of(listen)}:{listen.rpartition(':')[2]}"


def _url_of(listen: str, tls: bool) -> str:
    port = listen.rpartition(":")[2]
    return f"{'https' if tls else 'http'}://{_host_of(listen)}:{port}"


def _find_registry(value: str | None) -> str:
    if value is not None:
        return "" if value.lower() in ("", "off", "false", "no") else value
    return shutil.which("docker-registry") or shutil.which("registry") or ""


def _find_buildkitd() -> str:
    beside = Path(sys.prefix) / "bin" / "buildkitd"
    if beside.exists():
        return str(beside)
    return shutil.which("buildkitd") or "buildkitd"


class ConfigError(ValueError):
    pass


OPTIONS: tuple[Option, ...] = tuple(option for _group, _field, option in _options())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with any of the options below "
        "(keys as option names with underscores); env OPENDEPOT_CONFIG",
    )
    sections: dict[str, argparse._ArgumentGroup] = {}
    for group, _field, option in _options():
        if group not in sections:
            sections[group] = parser.add_argument_group(f"{group} options")
        # A boolean flag alone means true (`--unsafe-builders`); `--status-tap false` still works.
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if option.parse is _bool else {}
        sections[group].add_argument(
            *filter(None, (option.flag, option.alias)),
            dest=option.name,
            metavar=option.metavar,
            default=None,
            action="append" if option.repeatable else "store",
            help=f"{option.help} [env {option.env}]",
            **switch,
        )


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or environ.get("OPENDEPOT_CONFIG")
    if config_path:
        try:
            file_values = tomllib.loads(Path(config_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_path}: {exc}") from exc
        unknown = set(file_values) - {o.name for o in OPTIONS}
        if unknown:
            raise ConfigError(f"unknown keys in {config_path}: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        flag_value = getattr(args, option.name, None)
        if flag_value is not None:
            if option.repeatable:
                flag_value = ",".join(flag_value)
            values[option.name], sources[option.name] = option.parse(flag_value), "flag"
        elif option.env in environ:
            values[option.name], sources[option.name] = option.parse(environ[option.env]), "env"
        elif option.name in file_values:
            values[option.name], sources[option.name] = option.parse(file_values[option.name]), "file"
        else:
            values[option.name], sources[option.name] = option.default(), "default"
    _derive(values, sources)
    groups: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
    for group, field_name, option in _options():
        groups[group][field_name] = values[option.name]
    config = Config(**{name: GROUPS[name](**kwargs) for name, kwargs in groups.items()}, sources=sources)
    _check(config)
    return config


def _derive(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Defaults that depend on other settings, and the checks that need several of them."""
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError("--tls-cert and --tls-key go together")
    if not values["regions"]:
        raise ConfigError("--regions must name at least one region")
    if values["default_region"] not in values["regions"] and sources["default_region"] == "default":
        values["default_region"] = values["regions"][0]
    if values["default_region"] not in values["regions"]:
        raise ConfigError(f"--default-region {values['default_region']} is not among --regions")
    data_dir = values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
    values["tls_cert"] = Path(values["tls_cert"]) if values["tls_cert"] else None
    values["tls_key"] = Path(values["tls_key"]) if values["tls_key"] else None
    values["database_url"] = values["database_url"] or sqlite_url(data_dir)
    values["secret_key_file"] = Path(values["secret_key_file"] or DataDir(data_dir).secret_key).expanduser()
    values["log_level"] = str(values["log_level"]).upper()
    public_url = (values["public_url"] or _url_of(values["listen"], bool(values["tls_cert"]))).rstrip("/")
    values["public_url"] = public_url
    values["buildkitd"] = values["buildkitd"] or _find_buildkitd()
    values["buildkit_host"] = values["buildkit_host"] or _host_of(values["buildkit_listen"])
    values["registry"] = _find_registry(values["registry"])
    values["registry_host"] = values["registry_host"] or _host_port_of(values["registry_listen"])
    if values["registry_mirror"]:
        if not values["registry"]:
            raise ConfigError("--registry-mirror needs the registry binary (--registry)")
        try:
            values["registry_mirror"] = check_upstream(values["registry_mirror"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    values["oidc_audiences"] = values["oidc_audiences"] or ("https://depot.dev", public_url)


def _check(config: Config) -> None:
    if config.builders.lease_timeout <= 0 or config.builders.idle_timeout < 0:
        raise ConfigError("--lease-timeout must be positive and --builder-idle-timeout not negative")
    if config.kubernetes.backend not in ("local", "kubernetes"):
        raise ConfigError(f"--builders must be local or kubernetes, got {config.kubernetes.backend!r}")
    if config.builders.max_builds_per_minute < 0:
        raise ConfigError("--max-builds-per-minute must be 0 (no bound) or positive")
    if config.builders.build_retention_days < 0:
        raise ConfigError("--build-retention-days must be 0 (kept forever) or positive")
    if config.builders.build_history_quota_mib < 0:
        raise ConfigError("--build-history-quota-mib must be 0 (no quota) or positive")
    if config.registry.quota_mib < 0:
        raise ConfigError("--registry-quota-mib must be 0 (no quota) or positive")
    if config.registry.quota_blobs < 0:
        raise ConfigError("--registry-quota-blobs must be 0 (from --registry-quota-mib) or positive")
    if config.builders.max_builders_per_org < 0 or config.builders.max_builders < 0:
        raise ConfigError("--max-builders-per-org and --max-builders must be 0 (no cap) or positive")
    if config.builders.pids_max < 64:
        raise ConfigError("--builder-pids-max must be at least 64 (buildkitd's own threads count)")
    if not (config.builders.memory_limit_mib == 0 or config.builders.memory_limit_mib >= 64):
        raise ConfigError("--builder-memory-limit-mib must be 0 (no cap) or at least 64 (buildkitd's own)")
    if config.builders.disk_max_mib < 256:
        raise ConfigError("--builder-disk-max-mib must be at least 256 (buildkitd's state and one step)")
    if not 1 <= config.server.workers <= 64:
        raise ConfigError("--workers must be between 1 and 64")
    try:
        config.api.host_port  # noqa: B018 - validates the address early
        config.gateway.host_port  # noqa: B018
        _split(config.registry.listen)
        _split(config.registry.mirror_listen)
    except ValueError as exc:
        raise ConfigError(f"--listen must be HOST:PORT, got {config.api.listen!r}") from exc
