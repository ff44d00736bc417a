"""A client that stops reading must not delay anyone, and is dropped when its backlog grows."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest
from beacon_test_client import BeaconClient

from discretpeer.proto import wire


def _stop_reading(client: BeaconClient) -> None:
    """The client's process stops reading its socket: nothing it receives is processed (no ACKs,
    no MAX_STREAM_DATA), exactly what the beacon sees from a stuck or malicious reader."""
    client.endpoint.datagram_received = lambda data, addr: None


async def _flood(client: BeaconClient, count: int) -> None:
    for n in range(count):
        client.protocol._quic.send_stream_data(0, wire.encode(wire.Ping(nonce=n)))
        if n % 50 == 0:
            client.protocol.transmit()
            await asyncio.sleep(0)
    client.protocol.transmit()


async def _introduction_latency(server, stuck: BeaconClient | None, rounds: int) -> list[float]:
    addr, pin = server.addresses[0], server.fingerprint
    latencies = []
    for _ in range(rounds):
        t = os.urandom(32)
        a = await BeaconClient.connect(addr, pin)
        b = await BeaconClient.connect(addr, pin)
        if stuck is not None:
            stuck.announce(add=[t])  # the stuck client waits on the same token: it is introduced too
            await _flood(stuck, 100)
        a.announce(add=[t])
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        b.announce(add=[t])
        await asyncio.gather(a.expect(wire.Introduction), b.expect(wire.Introduction))
        latencies.append(time.perf_counter() - start)
        await a.close()
        await b.close()
    return latencies


@pytest.mark.alone  # times asserted
async def test_stuck_client_does_not_delay_introductions(start_beacon):
    config = dict(
        max_unsent_bytes=16 * 1024 * 1024,
        frames_per_second_per_connection=1e6,
        frame_burst_per_connection=1_000_000,
        max_peers_per_token=100,
    )
    async with start_beacon(**config) as server:
        baseline = await _introduction_latency(server, None, 10)
        stuck = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        _stop_reading(stuck)
        await _flood(stuck, 2000)
        loaded = await _introduction_latency(server, stuck, 10)
        peer = next(p for p in server._clients.values() if p.instance == stuck.instance)
        backlog = peer.protocol.unsent_bytes()
        print(
            f"\nintroduction latency: baseline median {statistics.median(baseline) * 1000:.2f} ms "
            f"max {max(baseline) * 1000:.2f} ms; with a stuck reader (backlog {backlog} bytes) "
            f"median {statistics.median(loaded) * 1000:.2f} ms max {max(loaded) * 1000:.2f} ms"
        )
        assert backlog > 10_000  # the stuck client really is stuck, and still connected
        assert max(loaded) < 0.2
        stuck.protocol.close()
        stuck.endpoint.close()


async def test_slow_reader_is_dropped(start_beacon):
    config = dict(max_unsent_bytes=2048, frames_per_second_per_connection=1e6, frame_burst_per_connection=1_000_000)
    async with start_beacon(**config) as server:
        t = os.urandom(32)
        stuck = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        stuck.announce(add=[t])
        await asyncio.sleep(0.05)
        _stop_reading(stuck)
        await _flood(stuck, 2000)
        deadline = time.monotonic() + 3
        while 'beacon_rejections_total{reason="slow_reader"} 1.0' not in server.metrics.render().decode():
            assert time.monotonic() < deadline, server.metrics.render().decode()
            await asyncio.sleep(0.02)
        assert server.meetings.holders(t) == []
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        a.announce(add=[t])
        b.announce(add=[t])
        assert (await a.expect(wire.Introduction)).instance == b.instance
        assert (await b.expect(wire.Introduction)).instance == a.instance
        for client in (a, b, stuck):
            await client.close()
