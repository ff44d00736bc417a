"""Relay sessions between peers held by different machines (two beacons, one certificate, one
Redis) and different workers (one supervisor): grants, forwarding both ways, NAT rebinding, endings."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from beacon.relay_link import seal, unseal
from discretpeer.proto import wire
from discretpeer.proto.relay_frame import build_relay_frame
from discretpeer.proto.wire import ErrorCode
from tests.scaleout.processes import BeaconProcess, RebindingNat
from tests.scaleout.test_store_redis import beacons, wait_for
from tests.scaleout.test_workers import worker_of

BeaconClient = __import__("beacon_test_client").BeaconClient


class RelayPeer:
    def __init__(self, client) -> None:
        self.client = client
        self.datagrams: asyncio.Queue = asyncio.Queue()
        client.endpoint.on_datagram = lambda data, source: self.datagrams.put_nowait((data, source))

    async def received(self, timeout: float = 3.0):
        return await asyncio.wait_for(self.datagrams.get(), timeout)

    async def nothing(self, timeout: float = 0.3) -> None:
        await asyncio.sleep(timeout)
        assert self.datagrams.empty(), self.datagrams.get_nowait()


async def grant(a: RelayPeer, b: RelayPeer):
    token = os.urandom(32)
    a.client.announce(add=[token])
    await asyncio.sleep(0.2)
    b.client.announce(add=[token])
    await a.client.expect(wire.Introduction)
    await b.client.expect(wire.Introduction)
    a.client.send(wire.RelayRequest(token=token, instance=b.client.instance))
    await asyncio.sleep(0.1)
    b.client.send(wire.RelayRequest(token=token, instance=a.client.instance))
    grant_a = await a.client.expect(wire.RelayGrant)
    grant_b = await b.client.expect(wire.RelayGrant)
    assert grant_a.session_id == grant_b.session_id
    assert (grant_a.instance, grant_b.instance) == (b.client.instance, a.client.instance)
    return grant_a.session_id


async def exchange(a: RelayPeer, a_beacon, b: RelayPeer, b_beacon, sid: bytes) -> None:
    frame = build_relay_frame(sid, b"\x4f" + os.urandom(1200))
    a.client.endpoint.sendto(frame, a_beacon)
    data, source = await b.received()
    assert data == frame and source == b_beacon  # b hears it from its own beacon
    reply = build_relay_frame(sid, b"pong" * 10)
    b.client.endpoint.sendto(reply, b_beacon)
    data, source = await a.received()
    assert data == reply and source == a_beacon


def test_link_datagrams_are_authenticated():
    key, other = os.urandom(32), os.urandom(32)
    sealed = seal(key, ("192.0.2.7", 4000), b"\x20" + os.urandom(40))
    assert unseal(key, sealed) == (("192.0.2.7", 4000), sealed[-41:])
    assert unseal(other, sealed) is None
    assert unseal(key, sealed[:-1] + bytes([sealed[-1] ^ 1])) is None
    assert unseal(key, b"\xd1" + b"\0" * 10) is None


async def test_relay_between_peers_on_two_machines(redis_server):
    async with beacons(redis_server.url) as (one, two):
        a = RelayPeer(await BeaconClient.connect(one.addresses[0], one.fingerprint))
        b = RelayPeer(await BeaconClient.connect(two.addresses[0], two.fingerprint))
        try:
            sid = await grant(a, b)
            assert sid[0] == 0xFF  # no worker index: a cross-machine session
            await exchange(a, one.addresses[0], b, two.addresses[0], sid)
            owner = one if one.relay.session_count else two
            assert owner.relay.session_count == 1 and owner.relay.forwarded_datagrams == 2
            # a stranger naming the session at either beacon is not forwarded
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                stranger.sendto(build_relay_frame(sid, b"evil"), one.addresses[0])
                stranger.sendto(build_relay_frame(sid, b"evil"), two.addresses[0])
                # and forged link datagrams are rejected
                stranger.sendto(
                    seal(os.urandom(32), b.client.local_address, build_relay_frame(sid, b"x")), one.link.address
                )
            await a.nothing()
            await b.nothing()
            assert one.link.rejected == 1
            # a leaves: b is told, whichever beacon owned the session
            await a.client.close()
            end = await b.client.expect(wire.RelayEnd, timeout=5)
            assert end.code == ErrorCode.RELAY_PEER_GONE and end.session_id == sid
            await asyncio.sleep(0.1)
            assert one.relay.session_count == two.relay.session_count == 0
            assert not one.link.proxies and not two.link.proxies
        finally:
            await a.client.close()
            await b.client.close()


async def test_relay_refused_without_introduction_across_machines(redis_server):
    async with beacons(redis_server.url) as (one, two):
        a = await BeaconClient.connect(one.addresses[0], one.fingerprint)
        b = await BeaconClient.connect(two.addresses[0], two.fingerprint)
        try:
            a.send(wire.RelayRequest(token=os.urandom(32), instance=b.instance))
            refusal = await a.expect(wire.Error)
            assert refusal.code == ErrorCode.RELAY_NOT_INTRODUCED
        finally:
            await a.close()
            await b.close()


def validated(server, address: tuple[str, int]) -> bool:
    return any(address in peer.protocol.validated_paths() for peer in server._clients.values())


async def migrate(client, nat: RebindingNat, server) -> None:
    """The NAT in front of ``client`` gives it a new port; a PING moves its beacon connection there
    and the beacon validates the new path (PATH_CHALLENGE through the NAT)."""
    await nat.rebind()
    client.send(wire.Ping(nonce=nat.outside_port))
    assert (await client.expect(wire.Pong)).nonce == nat.outside_port
    await wait_for(lambda: validated(server, ("127.0.0.1", nat.outside_port)))


async def test_relay_across_machines_follows_nat_rebinding(redis_server):
    """Both peers' NATs rebind during a cross-machine session: the side held on the owner moves
    as on one beacon, and the other machine's proxy follows its peer's validated new address."""
    async with beacons(redis_server.url) as (one, two):
        nat_a, nat_b = await RebindingNat.open(one.addresses[0]), await RebindingNat.open(two.addresses[0])
        a = RelayPeer(await BeaconClient.connect(nat_a.address, one.fingerprint))
        b = RelayPeer(await BeaconClient.connect(nat_b.address, two.fingerprint))
        try:
            sid = await grant(a, b)
            assert sid[0] == 0xFF
            await exchange(a, nat_a.address, b, nat_b.address, sid)
            for _ in range(2):
                await migrate(a.client, nat_a, one)
                await migrate(b.client, nat_b, two)
                await exchange(a, nat_a.address, b, nat_b.address, sid)
                await exchange(b, nat_b.address, a, nat_a.address, sid)
            # an address no connection validated moves nothing and gets nothing through
            (proxy,) = [*one.link.proxies.values(), *two.link.proxies.values()]
            where = proxy.current
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                stranger.bind(("127.0.0.1", 0))
                for beacon in (one, two):
                    stranger.sendto(build_relay_frame(sid, b"\x4fevil"), beacon.addresses[0])
            await a.nothing()
            await b.nothing()
            assert proxy.current == where
            await exchange(a, nat_a.address, b, nat_b.address, sid)
        finally:
            await a.client.close()
            await b.client.close()
            nat_a.close()
            nat_b.close()


async def clients_behind_nats_on_each_worker(beacon: BeaconProcess, tries: int = 40):
    """Two clients, each behind its own rebinding NAT, held by different workers."""
    by_worker: dict[int, tuple] = {}
    for _ in range(tries):
        nat = await RebindingNat.open(beacon.address)
        client = await BeaconClient.connect(nat.address, beacon.fingerprint)
        index = worker_of(client)
        if index in by_worker:
            await client.close()
            nat.close()
            continue
        by_worker[index] = (client, nat)
        if len(by_worker) == 2:
            return by_worker[0], by_worker[1]
    raise AssertionError(f"connections reached workers {sorted(by_worker)}")


@pytest.mark.slow
async def test_relay_between_peers_on_two_workers(redis_server, tmp_path):
    """A session between peers held by two workers; both peers' NATs then rebind: the owner asks
    the other worker whether its peer's connection validated the new address, the session follows."""
    beacon = BeaconProcess(tmp_path / "beacon", {"store": redis_server.url, "workers": 2}, "--port", "0").start()
    try:
        (first, nat_a), (second, nat_b) = await clients_behind_nats_on_each_worker(beacon)
        a, b = RelayPeer(first), RelayPeer(second)
        try:
            sid = await grant(a, b)
            assert sid[0] in (0, 1)  # the owner's index: the BPF program brings both sides to it
            await exchange(a, nat_a.address, b, nat_b.address, sid)
            for peer, nat in ((a, nat_a), (b, nat_b)):
                await nat.rebind()
                peer.client.send(wire.Ping(nonce=nat.outside_port))
                assert (await peer.client.expect(wire.Pong)).nonce == nat.outside_port
            await resend_until_forwarded(a, nat_a.address, b, sid)
            await resend_until_forwarded(b, nat_b.address, a, sid)
            a.client.send(wire.RelayEnd(session_id=sid, code=ErrorCode.RELAY_PEER_GONE, message="done"))
            end = await b.client.expect(wire.RelayEnd, timeout=5)
            assert end.session_id == sid
        finally:
            await a.client.close()
            await b.client.close()
            nat_a.close()
            nat_b.close()
    finally:
        assert beacon.stop() == 0
        assert "Traceback" not in beacon.stderr


async def resend_until_forwarded(sender: RelayPeer, to, receiver: RelayPeer, sid: bytes) -> None:
    """A peer's datagrams after a rebinding: the first ones may be dropped while the beacon checks
    the new address (as a QUIC sender retransmits, this one resends)."""
    frame = build_relay_frame(sid, b"\x4f" + os.urandom(300))
    for _ in range(20):
        sender.client.endpoint.sendto(frame, to)
        try:
            data, _ = await receiver.received(0.1)
        except TimeoutError:
            continue
        assert data == frame
        return
    raise AssertionError("never forwarded")
