"""Files only their owner may read: secrets, keys, configs that hold them."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: str | bytes) -> None:
    """Created (or truncated) with mode 0600 from the start, so the content is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def private_dir(path: Path) -> None:
    """A directory only its owner may enter (the data dir: pending logins, build logs, the database)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # an existing directory keeps its old mode through mkdir


def private_from_now_on() -> None:
    """Everything this process creates from now on (database, WAL, logs) is readable by its owner only."""
    os.umask(0o077)


def make_private(path: Path) -> None:
    if path.exists():
        os.chmod(path, 0o600)
