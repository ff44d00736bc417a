"""The beacon client's keepalive against a real in-process beacon: jittered Pings (no herd of
clients pinging in lockstep) and ``check_now`` (ping at once, at most once a second)."""

from __future__ import annotations

import asyncio
import os
import random

from discretpeer import beacon_client
from discretpeer.beacon_client import BeaconClient
from discretpeer.config import BeaconSpec
from discretpeer.endpoint import Endpoint
from discretpeer.proto.wire import Ping
from tests.conftest import beacon_entry


async def started_client(beacon, rng: random.Random) -> tuple[BeaconClient, Endpoint, list[float]]:
    endpoint = await Endpoint.open("127.0.0.1", 0)
    client = BeaconClient(
        BeaconSpec.parse(beacon_entry(beacon)),
        endpoint,
        os.urandom(16),
        on_introduction=lambda *_: None,
        get_candidates=list,
        rng=rng,
    )
    pings: list[float] = []
    send = client._send

    def recording_send(message):  # type: ignore[no-untyped-def]  # a local helper
        if isinstance(message, Ping):
            pings.append(asyncio.get_running_loop().time())
        return send(message)

    client._send = recording_send  # type: ignore[method-assign]  # patched for this test or benchmark
    client.start()
    assert await client.wait_connected(5)
    return client, endpoint, pings


async def test_keepalive_pings_are_jittered(beacon, monkeypatch):
    monkeypatch.setattr(beacon_client, "KEEPALIVE_INTERVAL", 0.2)
    client, endpoint, pings = await started_client(beacon, random.Random(1))
    try:
        await asyncio.sleep(3.0)
    finally:
        await client.close()
        endpoint.close()
    intervals = [b - a for a, b in zip(pings[2:], pings[3:], strict=False)]  # after the first RTT measurement
    assert len(intervals) >= 8
    low = 0.2 * (1 - beacon_client.KEEPALIVE_JITTER)
    assert all(low - 0.01 <= i <= 0.2 + 0.05 for i in intervals), intervals
    assert max(intervals) - min(intervals) > 0.015, intervals  # not a fixed period


async def test_check_now_pings_at_once_and_at_most_once_a_second(beacon):
    client, endpoint, pings = await started_client(beacon, random.Random(2))
    try:
        await asyncio.sleep(1.2)  # first Ping answered, the next one is 6-8 s away
        count = len(pings)
        client.check_now()
        await asyncio.sleep(0.1)
        assert len(pings) == count + 1
        client.check_now()  # too soon: nothing
        await asyncio.sleep(0.1)
        assert len(pings) == count + 1
        assert client.connected and client.status.last_error is None
    finally:
        await client.close()
        endpoint.close()
