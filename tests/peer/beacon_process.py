"""A beacon run as its own process (``python -m beacon --dir D``), killable with SIGKILL and
restartable in the same directory on the same port: shared by the crash-recovery test and
``benchmarks/crash_recovery.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from discretpeer import Identity, Peer
from tests.support.processes import beacon_command

ROOT = Path(__file__).resolve().parents[2]


class BeaconProcess:
    def __init__(self, directory: Path, *extra_args: str, stderr: int = asyncio.subprocess.PIPE) -> None:
        """``extra_args`` go to ``python -m beacon``; ``stderr`` is PIPE (shown if the beacon exits
        early) or DEVNULL (for long runs, where nobody reads it)."""
        self.directory = directory
        self.extra_args = extra_args
        self.stderr = stderr
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.fingerprint = ""

    async def start(self) -> float:
        """Start (on the previous port after a kill); return the loop time it said ``ready``."""
        self.process = await asyncio.create_subprocess_exec(
            *beacon_command(self.directory, "--port", str(self.port), *self.extra_args),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=self.stderr,
        )
        assert self.process.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.process.stdout.readline(), 15)).decode().strip()
            if not line:
                stderr = self.process.stderr
                raise RuntimeError(f"beacon exited early: {(await stderr.read()).decode() if stderr else ''}")
            if line.startswith("certificate hash: "):
                self.fingerprint = line.split(": ", 1)[1]
            elif line.startswith("listening on "):
                self.port = int(line.rsplit(":", 1)[1])
            elif line == "ready":
                return asyncio.get_running_loop().time()

    async def kill(self) -> float:
        """SIGKILL (no goodbye to anyone); return the loop time it was dead."""
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
        return asyncio.get_running_loop().time()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    @property
    def entry(self) -> dict[str, str]:
        return {"hostname": f"127.0.0.1:{self.port}", "cert_hash": self.fingerprint}


@asynccontextmanager
async def beacon_process(directory: Path, *extra_args: str) -> AsyncIterator[BeaconProcess]:
    """A started BeaconProcess in ``directory``, stopped at the end."""
    beacon = BeaconProcess(directory, *extra_args)
    await beacon.start()
    try:
        yield beacon
    finally:
        await beacon.stop()


def loopback_peer(beacon: BeaconProcess, **kwargs: Any) -> Peer:
    """A peer on 127.0.0.1 that uses only this beacon."""
    return Peer(Identity.generate(), [beacon.entry], host="127.0.0.1", **kwargs)
