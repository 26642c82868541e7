"""Where a project's build cache lives on disk: one directory per project, one buildkitd state dir per
platform inside it. Resetting asks the machine manager to stop the project's builders, waits for that,
then deletes the directory: the next build starts from an empty cache."""

from __future__ import annotations

import asyncio
import shutil
import time

from opendepot.datadir import DataDir
from opendepot.errors import FailedPrecondition
from opendepot.store import Store

from . import service as machines

STOP_TIMEOUT_SECONDS = 30.0


class BuilderReset:
    def __init__(self, paths: DataDir, store: Store) -> None:
        self.paths = paths
        self.store = store

    async def stop_and_wipe(self, project_id: str) -> None:
        path = self.paths.project_cache(project_id)
        pending = await self.store.run(lambda s: machines.request_reset(s, project_id))
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while pending and await self.store.read(lambda s: machines.resetting(s, project_id)):
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"the builders of project {project_id} did not stop in time; try again"
                )
            await asyncio.sleep(0.1)
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def forget(self, project_id: str) -> None:
        await self.store.run(lambda s: machines.forget_project(s, project_id))
