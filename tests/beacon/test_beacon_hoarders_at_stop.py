"""Strangers who open connections to every listener of a beacon process and never finish what
they started (metrics and web requests cut off mid-header, TLS handshakes never begun, garbage
datagrams) while a real pair meets, and while the beacon stops. The beacon's timeouts and its
shutdown wait on tasks (discretpeer.tasks.wait_for / cancel_and_wait): none may hang on a
stranger, lose a cancellation, or print a traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

from beacon_test_client import BeaconClient

from discretpeer.proto import wire
from tests.beacon.test_beacon_cli import parse, run_beacon, start_lines
from tests.cli.conftest import free_port
from tests.support.processes import LOOPBACK_BEACON

SLOWLORIS = 10  # connections per listener


async def hoard(port: int, first_bytes: bytes) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    held = []
    for _ in range(SLOWLORIS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if first_bytes:
            writer.write(first_bytes)
            await writer.drain()
        held.append((reader, writer))
    return held


async def test_hoarding_strangers_neither_block_a_meeting_nor_the_stop(tmp_path):
    directory = tmp_path / "beacon"
    directory.mkdir()
    web_port = free_port()
    (directory / "Beacon.conf.toml").write_text(f'web_enabled = true\nweb_port = {web_port}\nweb_host = "127.0.0.1"\n')
    process = await run_beacon("--dir", str(directory), *LOOPBACK_BEACON, "--metrics-port", "0")
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        lines = await start_lines(process)
        fingerprint, listening = parse(lines)
        quic_port = listening[0][1]
        metrics_port = int(next(x for x in lines if x.startswith("metrics on ")).rsplit(":", 1)[1].split("/")[0])

        # the strangers: requests cut off in their header, TLS that never starts, UDP garbage
        metrics_hoard = await hoard(metrics_port, b"GET /metr")
        web_hoard = await hoard(web_port, b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        tls_hoard = await hoard(quic_port, b"")  # the TLS/TCP listener shares the port number
        held = metrics_hoard + web_hoard + tls_hoard
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(200):
            udp.sendto(os.urandom(1200), ("127.0.0.1", quic_port))
        udp.close()

        # a real pair still meets meanwhile
        started = time.monotonic()
        a = await BeaconClient.connect(listening[0], fingerprint)
        b = await BeaconClient.connect(listening[0], fingerprint)
        token = os.urandom(wire.TOKEN_SIZE)
        a.announce(add=[token])
        b.announce(add=[token])
        assert (await a.expect(wire.Introduction)).instance == b.instance
        assert (await b.expect(wire.Introduction)).instance == a.instance
        assert time.monotonic() - started < 5.0

        # a metrics request cut off mid-header is closed by the beacon (5 s), not held forever
        for reader, _ in metrics_hoard:
            assert await asyncio.wait_for(reader.read(), 10) == b""

        # the stop, with the web and TLS hoarders still connected: prompt, clean
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert (await a.expect(wire.Error, timeout=5)).code == wire.ErrorCode.SHUTTING_DOWN
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert time.monotonic() - stopping < 10.0
        await a.close()
        await b.close()
    finally:
        for _, writer in held:
            writer.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = (await process.stderr.read()).decode()
    assert "Traceback" not in stderr, stderr
    log = (directory / "logs" / "beacon.log").read_text()
    assert "Traceback" not in log and '"event": "beacon_stopped"' in log
