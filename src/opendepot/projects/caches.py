"""Where a project's build cache lives on disk: one directory per project, one state dir per platform
inside it (the machine manager runs buildkitd with that state dir). Resetting deletes it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from opendepot.ids import looks_like_id


class ProjectCaches:
    def __init__(self, root: Path) -> None:
        self.root = root

    def project_dir(self, project_id: str) -> Path:
        if not looks_like_id(project_id):
            # Project ids come from our store, but a path is never built from anything else.
            raise ValueError(f"not a project id: {project_id!r}")
        return self.root / project_id

    async def reset(self, project_id: str) -> None:
        path = self.project_dir(project_id)
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
