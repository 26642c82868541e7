"""Stopping the child processes the supervisor runs (builders, the registry)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess


async def terminate(process: subprocess.Popen[bytes], grace_seconds: float = 15) -> None:
    """SIGTERM, then SIGKILL to its whole process group (children such as RUN containers included) if it
    has not exited within grace_seconds. The children are started in sessions of their own."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.to_thread(process.wait), timeout=grace_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)
