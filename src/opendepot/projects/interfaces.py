"""What the projects domain needs from outside it, as Protocols: it asks, it never imports the answerer.
The implementations are wired in `server/worker.py`."""

from __future__ import annotations

from typing import Protocol


class BuilderReset(Protocol):
    """Implemented by `builders/reset.py`."""

    async def stop_and_wipe(self, project_id: str) -> None:
        """Stops the project's builders (waiting for the supervisor to report them stopped), then deletes its
        build cache. Raises FailedPrecondition when they do not stop in time; nothing is deleted then."""
        ...

    async def forget(self, project_id: str) -> None:
        """Drops what is recorded of a deleted project's builders (stopped by `stop_and_wipe` first)."""
        ...


class CertificateAuthority(Protocol):
    """Implemented by `pki/authority.py`."""

    def forget(self, project_id: str) -> None:
        """Deletes the project's CA: certificates it issued stop verifying."""
        ...
