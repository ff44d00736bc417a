"""Child processes of the tests (and of the benchmarks that reuse them): the command line of a
beacon on loopback, and stopping a process for good."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

# a beacon that listens on loopback only, on a port the kernel picks
LOOPBACK_BEACON = ("--host", "127.0.0.1", "--port", "0", "--no-ipv6")


def beacon_command(directory: Path, *extra: str) -> list[str]:
    """``python -m beacon --dir DIRECTORY`` on loopback (:data:`LOOPBACK_BEACON`), then ``extra``
    (a later ``--port`` wins)."""
    return [sys.executable, "-m", "beacon", "--dir", str(directory), *LOOPBACK_BEACON, *extra]


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited ``timeout`` seconds later."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def stop_async_process(process: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    """The same for an asyncio subprocess."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
