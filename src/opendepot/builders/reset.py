"""Where a project's build cache lives on disk: one directory per project, one buildkitd state dir per
platform inside it. Resetting asks the machine manager to stop the project's builders, waits for that,
then deletes the directory: the next build starts from an empty cache."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from opendepot.errors import FailedPrecondition
from opendepot.ids import looks_like_id
from opendepot.store import Store

from . import service as machines

STOP_TIMEOUT_SECONDS = 30.0


class BuilderReset:
    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.store = store

    def project_dir(self, project_id: str) -> Path:
        if not looks_like_id(project_id):
            # Project ids come from our store, but a path is never built from anything else.
            raise ValueError(f"not a project id: {project_id!r}")
        return self.root / project_id

    async def reset(self, project_id: str) -> None:
        path = self.project_dir(project_id)
        pending = await self.store.run(lambda s: machines.request_reset(s, project_id))
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while pending and await self.store.read(lambda s: machines.resetting(s, project_id)):
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"the builders of project {project_id} did not stop in time; try again"
                )
            await asyncio.sleep(0.1)
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)
