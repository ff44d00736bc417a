"""Stateless resets from the beacon (RFC 9000 §10.3): derived tokens, the unknown-CID answer and
its limits, on real QUIC and real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import socket

from beacon.limits import TokenBucket
from beacon.server import _is_own_socket
from certs import create_bundle
from discretpeer.proto import wire
from discretpeer.stateless_reset import is_reset, reset_key, reset_token


def key_of(server) -> bytes:
    return reset_key(server.bundle.private_key.private_bytes_raw())


async def exchange(sock: socket.socket, target, data: bytes, timeout: float = 0.3) -> bytes | None:
    """Send ``data`` from ``sock``; the answer, or None if none came within ``timeout``."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, target)
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)
    except TimeoutError:
        return None


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def short_packet(cid: bytes, size: int) -> bytes:
    return bytes([0x40 | 0x01]) + cid + os.urandom(size - 1 - len(cid))


async def test_every_issued_connection_id_carries_the_derived_token(beacon, connect):
    client = await connect()
    client.send(wire.Ping(nonce=1))
    await client.expect(wire.Pong)
    await asyncio.sleep(0.1)  # NEW_CONNECTION_ID frames follow the handshake
    quic = client.protocol._quic
    issued = [quic._peer_cid, *quic._peer_cid_available]
    assert len(issued) >= 2  # the handshake's ID (transport parameter) and a NEW_CONNECTION_ID one
    key = key_of(beacon)
    for connection_id in issued:
        assert connection_id.stateless_reset_token == reset_token(key, connection_id.cid)
    assert key != reset_key(create_bundle().private_key.private_bytes_raw())  # per beacon key


async def test_a_beacon_sharing_the_key_resets_a_connection_it_does_not_know(start_beacon):
    bundle = create_bundle()
    async with start_beacon(bundle=bundle) as first, start_beacon(bundle=bundle) as second:
        from beacon_test_client import BeaconClient

        client = await BeaconClient.connect(first.addresses[0], first.fingerprint)
        try:
            client.send(wire.Ping(nonce=1))
            await client.expect(wire.Pong)
            quic = client.protocol._quic
            cid, token = quic._peer_cid.cid, quic._peer_cid.stateless_reset_token
            sock = udp_socket()
            try:
                answer = await exchange(sock, second.addresses[0], short_packet(cid, 60))
            finally:
                sock.close()
            assert answer is not None and len(answer) < 60
            assert is_reset(answer, [token]) and answer[0] & 0xC0 == 0x40
            assert second.stateless_resets_sent == 1
            # the client, handed that reset, ends its connection at once
            client.endpoint.datagram_received(answer, first.addresses[0])
            assert client.protocol.reset_received
            assert await asyncio.wait_for(client.protocol.inbox.get(), 1) is None
            assert client.protocol.terminated is not None
            assert client.protocol.terminated.reason_phrase == "stateless reset"
            assert client.protocol not in client.endpoint.connections
        finally:
            client.protocol.close()
            client.endpoint.close()


async def test_reset_sizes_and_what_gets_none(beacon):
    target = beacon.addresses[0]
    key = key_of(beacon)
    sock = udp_socket()
    try:
        cid = os.urandom(8)
        for trigger, expected in ((1200, 43), (40, 39), (22, 21)):
            answer = await exchange(sock, target, short_packet(cid, trigger))
            assert answer is not None and len(answer) == expected
            assert answer.endswith(reset_token(key, cid))
        # too small for a smaller reset to exist: nothing (a reset must never be as big as its trigger)
        assert await exchange(sock, target, short_packet(cid, 21)) is None
        # long header (handshake packets) with an unknown connection id: nothing
        long_header = bytes([0xE0]) + b"\x00\x00\x00\x01" + bytes([8]) + cid + bytes([8]) + os.urandom(68)
        assert await exchange(sock, target, long_header) is None
        # not QUIC at all (fixed bit clear): the relay's business, no reset
        assert await exchange(sock, target, bytes([0x01]) + os.urandom(60)) is None
        assert beacon.stateless_resets_sent == 3
        assert b'beacon_stateless_resets_total{reason="sent"} 3.0' in beacon.metrics.render()
    finally:
        sock.close()


async def test_resets_are_rate_limited(beacon):
    beacon._resets = TokenBucket(5.0, 5.0, asyncio.get_running_loop().time())
    sock = udp_socket()
    loop = asyncio.get_running_loop()
    try:
        for _ in range(200):
            await loop.sock_sendto(sock, short_packet(os.urandom(8), 100), beacon.addresses[0])
        await asyncio.sleep(0.3)
        answers = 0
        while True:
            try:
                sock.recv(2048)
                answers += 1
            except BlockingIOError:
                break
    finally:
        sock.close()
    assert 5 <= answers <= 10
    assert beacon.stateless_resets_sent == answers
    assert beacon.stateless_resets_limited >= 190


async def test_never_answers_its_own_socket(beacon):
    endpoint = beacon._endpoints[0]
    host, port = endpoint.local_address
    assert _is_own_socket(endpoint, (host, port))
    assert _is_own_socket(endpoint, ("127.0.0.1", 0))
    assert not _is_own_socket(endpoint, (host, port + 1 if port < 65535 else port - 1))
    sent = beacon.stateless_resets_sent
    # a packet that claims to come from the beacon's own address gets nothing back
    beacon._stateless_reset(endpoint, short_packet(os.urandom(8), 100), (host, port), os.urandom(8))
    assert beacon.stateless_resets_sent == sent
