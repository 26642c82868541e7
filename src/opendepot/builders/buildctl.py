"""The supervisor's questions to a builder's BuildKit (cache size, ListWorkers, a prune) asked through
`buildctl`, BuildKit's own client, the same way for both backends: at a local builder's unix socket, or at a
pod over the project's mTLS link."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from opendepot.buildkit.du import total_size

# The most a buildctl may write: `du` of a cache of ~50,000 records.
MAX_OUTPUT = 16 << 20
# The longest a prune may take (a wedged BuildKit does not hold the task forever).
PRUNE_SECONDS = 300.0


def buildctl_beside(buildkitd: str) -> str:
    """The buildctl next to the buildkitd in use (both built from one BuildKit), else the one on PATH."""
    beside = Path(buildkitd).with_name("buildctl")
    if beside.is_absolute() and beside.exists():
        return str(beside)
    return shutil.which("buildctl") or "buildctl"


async def run_buildctl(
    buildctl: str, address: Sequence[str], *args: str, within: float
) -> tuple[int, bytes] | None:
    """`buildctl <address> <args>`: its exit status and output, or None if it took longer than `within`
    seconds or wrote more than MAX_OUTPUT (then it is killed: a wedged BuildKit never answers, a buildctl
    left waiting would pile up with every probe, and what answers at a pod's port is the tenant's if a RUN
    step took its buildkitd over, so its output must not grow the supervisor without end).
    OSError: buildctl cannot run."""
    process = await asyncio.create_subprocess_exec(
        buildctl,
        *address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    stdout = process.stdout

    async def finished() -> tuple[int, bytes] | None:
        chunks, size = [], 0
        while chunk := await stdout.read(64 << 10):
            size += len(chunk)
            if size > MAX_OUTPUT:
                return None
            chunks.append(chunk)
        return await process.wait(), b"".join(chunks)

    try:
        ran = await asyncio.wait_for(finished(), timeout=within)
    except TimeoutError:
        ran = None
    except asyncio.CancelledError:  # its caller gave up first (a bounded sample, a stop): not left behind
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    if ran is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        # What it wrote before the kill is read away: a pipe left full is never closed, and the wait for
        # the process waits for its pipes too. Bounded: a child that inherited the pipe may keep it open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_drain(stdout), timeout=5)
            await asyncio.wait_for(process.wait(), timeout=5)
    return ran


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(64 << 10):
        pass


async def cache_bytes(buildctl: str, address: Sequence[str], within: float = 30.0) -> int | None:
    """The cache size BuildKit reports (`buildctl du`), or None if it cannot say."""
    try:
        ran = await run_buildctl(buildctl, address, "du", "--format", "{{json .}}", within=within)
    except OSError:
        return None
    if ran is None or ran[0] != 0:
        return None
    return total_size(ran[1])


async def answers(buildctl: str, address: Sequence[str], within: float) -> bool:
    """Whether BuildKit answers ListWorkers (`buildctl debug workers`) within `within` seconds: a socket that
    accepts is not enough, a wedged buildkitd accepts and never answers. A buildctl that cannot run counts as
    an answer: it cannot tell, and a restart on a guess would cut builds."""
    try:
        ran = await run_buildctl(buildctl, address, "debug", "workers", within=within)
    except OSError:
        return True
    return ran is not None and ran[0] == 0


async def prune_to(
    buildctl: str, address: Sequence[str], keep_bytes: int, within: float = PRUNE_SECONDS
) -> bool:
    """Prunes the cache down to keep_bytes (`buildctl prune --keep-storage`, least recently used first);
    False if it failed or did not end in time."""
    keep_mb = str(keep_bytes / 1e6)  # buildctl's MB are 10^6 bytes
    try:
        ran = await run_buildctl(buildctl, address, "prune", "--keep-storage", keep_mb, within=within)
    except OSError:
        return False
    return ran is not None and ran[0] == 0
