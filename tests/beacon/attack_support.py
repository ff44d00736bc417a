"""Shared by the beacon's attack tests: a beacon whose logs and event-loop errors are watched,
RSS, and "a legitimate pair still meets"."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from beacon import BeaconServer, loopback_config
from beacon.logs import LOG_FILE, BeaconLog
from certs import CertificateBundle, create_bundle
from discretpeer.proto import wire


def _load(name: str, file: str) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


client_module = _load("beacon_test_client", "client.py")
hostile = _load("beacon_test_hostile", "hostile.py")
BeaconClient = client_module.BeaconClient


class RecordingLog:
    """A beacon logger that keeps every event, so a test can assert that no attack made the
    beacon log an error or a traceback."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.events.append((level, event, fields))

    @property
    def errors(self) -> list[tuple[str, str, dict]]:
        return [e for e in self.events if e[0] in ("error", "exception", "critical")]


def recorded_beacons(
    bundle: Callable[[], CertificateBundle | None] = lambda: None,
) -> Iterator[Callable[..., contextlib.AbstractAsyncContextManager[BeaconServer]]]:
    """The body of a ``start_beacon`` fixture: ``async with start(**config_changes)`` runs an
    in-process beacon (certificates from ``bundle()``) with a RecordingLog; at teardown, no
    error and no traceback in any of their logs."""
    logs: list[RecordingLog] = []

    @contextlib.asynccontextmanager
    async def start(**changes: Any) -> AsyncIterator[BeaconServer]:
        log = RecordingLog()
        logs.append(log)
        async with BeaconServer(loopback_config(**changes), bundle(), log=log) as server:
            yield server

    yield start
    for log in logs:
        assert log.errors == [], log.errors


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def buffered_bytes(quic: Any) -> int:
    """Bytes one aioquic connection holds in receive buffers (streams and CRYPTO)."""
    streams = list(getattr(quic, "_streams", {}).values()) + list(getattr(quic, "_crypto_streams", {}).values())
    return sum(len(stream.receiver._buffer) for stream in streams)


class Watched:
    """A running beacon, its JSON log file and the event loop's unhandled errors."""

    def __init__(self, server: BeaconServer, logs: BeaconLog, log_file: Path, loop_errors: list[dict]) -> None:
        self.server = server
        self.logs = logs
        self.log_file = log_file
        self.loop_errors = loop_errors

    @property
    def address(self) -> tuple[str, int]:
        return self.server.addresses[0]

    def log_lines(self) -> list[str]:
        self.logs.flush()
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []

    def assert_clean(self, max_lines: int | None = None) -> None:
        """No traceback in the logs, nothing unhandled in the event loop, few log lines."""
        lines = self.log_lines()
        bad = [line for line in lines if "Traceback" in line or '"exception"' in line or "internal_error" in line]
        assert not bad, bad[:3]
        assert not self.loop_errors, [str(e.get("exception") or e.get("message")) for e in self.loop_errors[:3]]
        if max_lines is not None:
            assert len(lines) <= max_lines, lines[-10:]

    def buffered_bytes(self) -> int:
        """Receive-buffer bytes held by all the beacon's live connections."""
        total = 0
        for peer in list(self.server._clients.values()):
            if not peer.protocol.dead:
                total += buffered_bytes(peer.protocol._quic)
        return total

    async def connect(self, **kwargs: Any) -> Any:
        return await BeaconClient.connect(self.address, self.server.fingerprint, **kwargs)

    async def hostile(self, **kwargs: Any) -> Any:
        return await hostile.Hostile.connect(BeaconClient, self.address, self.server.fingerprint, **kwargs)

    async def pair_meets(self, timeout: float = 5.0) -> float:
        """Two fresh clients announce one token; both must be introduced. Returns the seconds
        from the second announce to both introductions."""
        a = await self.connect(timeout=timeout)
        b = await self.connect(timeout=timeout)
        try:
            token = os.urandom(wire.TOKEN_SIZE)
            a.announce(add=[token])
            await asyncio.sleep(0.02)
            loop = asyncio.get_running_loop()
            started = loop.time()
            b.announce(add=[token])
            intro_a = await a.expect(wire.Introduction, timeout)
            intro_b = await b.expect(wire.Introduction, timeout)
            assert intro_a.instance == b.instance and intro_b.instance == a.instance
            return loop.time() - started
        finally:
            await a.close()
            await b.close()


@contextlib.asynccontextmanager
async def watched_beacon(log_dir: Path, **changes: Any) -> AsyncIterator[Watched]:
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    logs = BeaconLog(log_dir, level="debug", console=None)
    try:
        async with BeaconServer(loopback_config(**changes), create_bundle(), log=logs.log) as server:
            yield Watched(server, logs, Path(log_dir) / LOG_FILE, errors)
    finally:
        logs.close()
        loop.set_exception_handler(previous)


@contextlib.asynccontextmanager
async def attacked_beacon(log_dir: Path, **changes: Any) -> AsyncIterator[tuple[Watched, Any]]:
    """A watched beacon and one hostile connection to it. After the body the attacker is closed;
    the beacon must then still introduce a fresh pair, with nothing bad in its log."""
    async with watched_beacon(log_dir, **changes) as beacon:
        attacker = await beacon.hostile()
        try:
            yield beacon, attacker
        finally:
            await attacker.close()
        await beacon.pair_meets()
        beacon.assert_clean()
