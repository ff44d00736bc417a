"""Relay over real UDP: grants, raw forwarding both ways, source binding, quotas, endings."""

from __future__ import annotations

import asyncio
import os
import socket

from beacon_test_client import BeaconClient

from discretpeer.proto import wire
from discretpeer.proto.relay_frame import build_relay_frame
from discretpeer.proto.wire import ErrorCode


class RelayPeer:
    """A BeaconClient plus the relay datagrams that reach its socket."""

    def __init__(self, client: BeaconClient) -> None:
        self.client = client
        self.datagrams: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()
        client.endpoint.on_datagram = lambda data, source: self.datagrams.put_nowait((data, source))

    async def received(self, timeout: float = 2.0) -> tuple[bytes, tuple]:
        return await asyncio.wait_for(self.datagrams.get(), timeout)

    async def nothing(self, timeout: float = 0.2) -> None:
        await asyncio.sleep(timeout)
        assert self.datagrams.empty(), self.datagrams.get_nowait()


async def introduced_pair(server) -> tuple[RelayPeer, RelayPeer, bytes]:
    t = os.urandom(32)
    a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
    b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
    a.announce(add=[t])
    b.announce(add=[t])
    await a.expect(wire.Introduction)
    await b.expect(wire.Introduction)
    return RelayPeer(a), RelayPeer(b), t


async def granted_pair(server):
    a, b, t = await introduced_pair(server)
    a.client.send(wire.RelayRequest(token=t, instance=b.client.instance))
    await a.client.expect_nothing(0.05)
    b.client.send(wire.RelayRequest(token=t, instance=a.client.instance))
    grant_a = await a.client.expect(wire.RelayGrant)
    grant_b = await b.client.expect(wire.RelayGrant)
    return a, b, t, grant_a, grant_b


async def close_all(*peers: RelayPeer) -> None:
    for peer in peers:
        await peer.client.close()


async def test_grant_and_forward_both_ways(start_beacon):
    async with start_beacon() as server:
        a, b, t, grant_a, grant_b = await granted_pair(server)
        assert grant_a.session_id == grant_b.session_id
        assert (grant_a.token, grant_a.instance) == (t, b.client.instance)
        assert (grant_b.token, grant_b.instance) == (t, a.client.instance)
        assert grant_a.max_bytes == server.config.relay_max_bytes
        assert grant_a.max_seconds == server.config.relay_max_seconds
        assert grant_a.rate_bytes_per_second == server.config.relay_rate_bytes_per_second
        sid = grant_a.session_id
        beacon = server.addresses[0]

        frame = build_relay_frame(sid, b"\x4f" + os.urandom(1200))
        a.client.endpoint.sendto(frame, beacon)
        data, source = await b.received()
        assert data == frame and source == beacon
        reply = build_relay_frame(sid, b"pong" * 10)
        b.client.endpoint.sendto(reply, beacon)
        data, source = await a.received()
        assert data == reply and source == beacon

        # a third address naming the session is dropped and counted
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(build_relay_frame(sid, b"evil"), beacon)
            stranger.sendto(build_relay_frame(b"\0" * 8, b"unknown"), beacon)
        await a.nothing()
        await b.nothing()
        assert server.relay.dropped["wrong_source"] == 1
        assert server.relay.dropped["unknown_session"] == 1
        metrics = server.metrics.render().decode()
        assert 'beacon_relay_dropped_datagrams_total{reason="wrong_source"} 1.0' in metrics
        assert f"beacon_relay_bytes_total {len(frame) + len(reply)}.0" in metrics
        assert "beacon_relay_sessions_total 1.0" in metrics

        # asking again returns the same grant
        a.client.send(wire.RelayRequest(token=t, instance=b.client.instance))
        assert (await a.client.expect(wire.RelayGrant)).session_id == sid
        await close_all(a, b)


async def test_byte_quota_ends_session_for_both(start_beacon):
    async with start_beacon(relay_max_bytes=2500) as server:
        a, b, _, grant, _ = await granted_pair(server)
        frame = build_relay_frame(grant.session_id, os.urandom(1000))
        for _ in range(2):
            a.client.endpoint.sendto(frame, server.addresses[0])
            await b.received()
        a.client.endpoint.sendto(frame, server.addresses[0])
        end_a = await a.client.expect(wire.RelayEnd)
        end_b = await b.client.expect(wire.RelayEnd)
        assert end_a.code == end_b.code == ErrorCode.RELAY_BYTES_EXCEEDED
        assert end_a.session_id == grant.session_id
        await b.nothing()
        a.client.endpoint.sendto(frame, server.addresses[0])
        await b.nothing()
        await close_all(a, b)


async def test_disconnect_ends_session_peer_gone(start_beacon):
    async with start_beacon() as server:
        a, b, _, grant, _ = await granted_pair(server)
        await a.client.close()
        end = await b.client.expect(wire.RelayEnd)
        assert end.code == ErrorCode.RELAY_PEER_GONE and end.session_id == grant.session_id
        assert server.relay.session_count == 0
        await close_all(b)


async def test_peer_ends_session(start_beacon):
    async with start_beacon() as server:
        a, b, _, grant, _ = await granted_pair(server)
        a.client.send(wire.RelayEnd(session_id=grant.session_id, code=0, message="done"))
        end = await b.client.expect(wire.RelayEnd)
        assert end.code == ErrorCode.RELAY_PEER_GONE
        await close_all(a, b)


async def test_duration_quota(start_beacon):
    async with start_beacon(relay_max_seconds=1) as server:
        a, b, _, grant, _ = await granted_pair(server)
        end_a = await a.client.expect(wire.RelayEnd, timeout=3)
        end_b = await b.client.expect(wire.RelayEnd, timeout=3)
        assert end_a.code == end_b.code == ErrorCode.RELAY_DURATION_EXCEEDED
        await close_all(a, b)


async def test_rate_limit_drops_excess(start_beacon):
    async with start_beacon(relay_rate_bytes_per_second=1000, relay_burst_bytes=2100) as server:
        a, b, _, grant, _ = await granted_pair(server)
        frame = build_relay_frame(grant.session_id, os.urandom(1000))
        for _ in range(5):
            a.client.endpoint.sendto(frame, server.addresses[0])
        await asyncio.sleep(0.2)
        assert b.datagrams.qsize() == 2
        assert server.relay.dropped["throttled"] == 3
        await close_all(a, b)


async def test_relay_disabled_refuses(start_beacon):
    async with start_beacon(relay_enabled=False) as server:
        a, b, t = await introduced_pair(server)
        a.client.send(wire.RelayRequest(token=t, instance=b.client.instance))
        error = await a.client.expect(wire.Error)
        assert error.code == ErrorCode.RELAY_REFUSED and not error.fatal
        assert 'beacon_relay_refusals_total{reason="relay_refused"} 1.0' in server.metrics.render().decode()
        await close_all(a, b)


async def test_too_many_sessions(start_beacon):
    async with start_beacon(relay_max_sessions=0) as server:
        a, b, t = await introduced_pair(server)
        a.client.send(wire.RelayRequest(token=t, instance=b.client.instance))
        b.client.send(wire.RelayRequest(token=t, instance=a.client.instance))
        error = await b.client.expect(wire.Error)
        assert error.code == ErrorCode.RELAY_TOO_MANY_SESSIONS
        await close_all(a, b)


async def test_pending_request_expires(start_beacon):
    async with start_beacon(relay_request_timeout_seconds=0.2) as server:
        a, b, t = await introduced_pair(server)
        a.client.send(wire.RelayRequest(token=t, instance=b.client.instance))
        error = await a.client.expect(wire.Error, timeout=3)
        assert error.code == ErrorCode.RELAY_REFUSED and "expired" in error.message
        assert server.relay.pending_count == 0
        await close_all(a, b)
