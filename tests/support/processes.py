"""Child processes of the tests (and of the benchmarks that reuse them): the command line of a
beacon on loopback, and stopping a process for good."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
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


def stop_process_group(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """The same for a process started with ``start_new_session=True`` and every process of its group
    (children it left behind too), so that none writes into a directory the caller removes next."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    deadline = time.monotonic() + timeout
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    while _group_alive(process.pid) and time.monotonic() < deadline + timeout:
        time.sleep(0.02)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


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
