"""The use cases that span subsystems: deleting a project and resetting its cache. The order is the point:
builders are stopped and the cache wiped before the row goes, so a failure leaves a whole project behind,
never a row-less builder or cache."""

from __future__ import annotations

import asyncio

from opendepot.auth import Principal
from opendepot.store import Store

from . import service
from .interfaces import BuilderReset, CertificateAuthority
from .models import Project
from .service import ResetTarget


class ProjectLifecycle:
    def __init__(self, store: Store, builders: BuilderReset, authority: CertificateAuthority) -> None:
        self.store = store
        self.builders = builders
        self.authority = authority

    async def delete(self, principal: Principal, project_id: str) -> Project:
        """Rights checked → builders stopped, cache wiped → row (and, by cascade, tokens, builds) deleted →
        the builders' records and the project's CA forgotten."""
        project = await self.store.read(lambda s: service.check_delete_allowed(s, principal, project_id))
        await self.builders.stop_and_wipe(project.id)
        deleted = await self.store.run(lambda s: service.delete_project(s, principal, project.id))
        # After the row: no build of the project is left to start its builders again.
        await self.builders.forget(deleted.id)
        # A store write (the sealed CA) and a directory removal: off the event loop.
        await asyncio.to_thread(self.authority.forget, deleted.id)
        return deleted

    async def reset_cache(self, principal: Principal, project_id: str) -> ResetTarget:
        """Stops the project's builders and deletes its cache: the next build starts from an empty one."""
        target = await self.store.read(lambda s: service.reset_target(s, principal, project_id))
        await self.builders.stop_and_wipe(target.project.id)
        return target
