"""Stopping the daemons tests and benches start."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen[bytes], grace_seconds: float = 30) -> None:
    """Asked to stop (SIGTERM), killed if it has not within grace_seconds; waited for either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
