"""Every path under the data dir, named once. A path is only ever built from an id that looks like one of
ours: the check is here, so no caller repeats it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opendepot.ids import looks_like_id

ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret


def _checked(project_id: str) -> str:
    if not looks_like_id(project_id):
        # Project ids come from our store, but a path is never built from anything else.
        raise ValueError(f"not a project id: {project_id!r}")
    return project_id


@dataclass(frozen=True, slots=True)
class DataDir:
    root: Path

    @property
    def database(self) -> Path:
        """The SQLite database when no --database-url is given."""
        return self.root / "opendepot.db"

    @property
    def admin_token(self) -> Path:
        return self.root / ADMIN_TOKEN_FILE

    @property
    def secret_key(self) -> Path:
        """The key sealing the store's secrets when the operator gives none (a single node)."""
        return self.root / "secret-key"

    @property
    def pki(self) -> Path:
        """The project CAs (one directory per project, kept by pki/authority.py)."""
        return self.root / "pki"

    @property
    def run(self) -> Path:
        """Sockets, generated configs and pid files of the processes the supervisor runs."""
        return self.root / "run"

    @property
    def metrics(self) -> Path:
        """prometheus_client's multiprocess samples of the supervisor and the API workers (metrics.py)."""
        return self.root / "run" / "metrics"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def projects(self) -> Path:
        return self.root / "projects"

    def project_cache(self, project_id: str) -> Path:
        """A project's build cache: one buildkitd state dir per platform inside it."""
        return self.projects / _checked(project_id)

    def builder_state(self, project_id: str, platform: str) -> Path:
        return self.project_cache(project_id) / platform

    def builder_socket(self, project_id: str, platform: str) -> Path:
        return self.run / f"{_checked(project_id)}-{platform}.sock"

    def builder_config(self, project_id: str, platform: str) -> Path:
        return self.run / f"{_checked(project_id)}-{platform}.toml"

    def builder_log(self, project_id: str, platform: str) -> Path:
        return self.logs / f"{_checked(project_id)}-{platform}.log"

    @property
    def registry(self) -> Path:
        """The registry's keys and generated config."""
        return self.root / "registry"

    @property
    def registry_storage(self) -> Path:
        """Images, when --registry-storage names no other place."""
        return self.registry / "storage"

    @property
    def registry_pid(self) -> Path:
        return self.run / "registry.pid"

    @property
    def registry_log(self) -> Path:
        return self.logs / "registry.log"

    @property
    def registry_mirror(self) -> Path:
        """The pull-through cache's generated config and, under storage/, what it has cached."""
        return self.root / "registry-mirror"

    @property
    def registry_mirror_log(self) -> Path:
        return self.logs / "registry-mirror.log"
