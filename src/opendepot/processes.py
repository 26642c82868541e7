"""Child processes: stopping the ones the supervisor runs (builders, the registry); tying a worker to its
parent."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM if its parent dies, so that no worker outlives the supervisor."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
