"""Run ``python -m beacon`` as real processes for the scale-out tests, and a rebinding "NAT"."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from tests.support.processes import beacon_command, stop_process

ROOT = Path(__file__).resolve().parents[2]


def write_beacon_config(directory: Path, settings: dict) -> None:
    """``directory/Beacon.conf.toml`` with these top-level settings (strings, numbers, booleans)."""
    lines = [f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}" for k, v in settings.items()]
    (directory / "Beacon.conf.toml").write_text("\n".join(lines) + "\n")


class BeaconProcess:
    """``python -m beacon --dir DIR`` with a Beacon.conf.toml written from ``settings``."""

    def __init__(self, directory: Path, settings: dict, *extra: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_beacon_config(self.directory, settings)
        self.ready_file = self.directory / "ready.json"
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None
        self.facts: dict = {}

    def start(self, timeout: float = 30.0) -> BeaconProcess:
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            beacon_command(self.directory, "--ready-file", str(self.ready_file), *self.extra),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"beacon exited {self.process.returncode}: {self.process.stderr.read()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("beacon not ready in time")
            time.sleep(0.05)
        self.facts = json.loads(self.ready_file.read_text())
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.facts["port"])

    @property
    def fingerprint(self) -> str:
        return self.facts["fingerprint"]

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.facts.get("workers", [])]

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        stop_process(process, 20)
        self.stderr = process.stderr.read() if process.stderr else ""
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
        return process.returncode


class RebindingNat(asyncio.DatagramProtocol):
    """A UDP "NAT" on 127.0.0.1 between one client and the beacon: :meth:`rebind` moves the
    client's traffic to a new source port, as a NAT does when its mapping times out."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.outside: asyncio.DatagramTransport | None = None
        self.old: list[asyncio.DatagramTransport] = []

    @classmethod
    async def open(cls, upstream: tuple[str, int]) -> RebindingNat:
        loop = asyncio.get_running_loop()
        nat = cls(upstream)
        await loop.create_datagram_endpoint(lambda: nat, local_addr=("127.0.0.1", 0))
        await nat.rebind()
        return nat

    def connection_made(self, transport) -> None:
        self.transport = transport

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]

    @property
    def outside_port(self) -> int:
        return self.outside.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:
        self.client = addr
        if self.outside is not None:
            self.outside.sendto(data, self.upstream)

    async def rebind(self) -> None:
        nat = self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                if nat.client is not None and nat.transport is not None:
                    nat.transport.sendto(data, nat.client)

        if self.outside is not None:
            self.old.append(self.outside)  # the old mapping is gone: nothing more goes out of it
        self.outside, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Outside, local_addr=("127.0.0.1", 0)
        )

    def close(self) -> None:
        for transport in [self.transport, self.outside, *self.old]:
            if transport is not None:
                transport.close()
