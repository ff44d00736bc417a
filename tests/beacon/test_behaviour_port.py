"""The beacon's behaviour port: answers well-formed requests only, smaller than they are, at a
capped rate; off by default; and a real peer learns its (loopback: unchanged) mapping from it."""

from __future__ import annotations

import asyncio
import os
import socket

from beacon import BeaconServer, loopback_config
from certs import create_bundle
from discretpeer import Identity, Peer, behaviour, wire


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_answers_requests_only_and_is_capped() -> None:
    port = free_udp_port()
    async with BeaconServer(loopback_config(behaviour_port=port), create_bundle()) as server:
        assert server._behaviour is not None
        server._behaviour.rate = server._behaviour._allowance = 50  # a small cap, to see it hold
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        junk = [b"", b"\x0bDPB", behaviour.request(os.urandom(12))[:63], os.urandom(64), b"\xc0" * 1200]
        for data in junk:
            sock.sendto(data, ("127.0.0.1", port))
        nonce = os.urandom(12)
        for _ in range(200):  # a flood of valid requests: at most the cap is answered
            sock.sendto(behaviour.request(nonce), ("127.0.0.1", port))
        own = sock.getsockname()
        answers = []
        with_timeout = loop.time() + 1.0
        while loop.time() < with_timeout:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.3)
            except TimeoutError:
                break
            answers.append(data)
        sock.close()
        assert answers and len(answers) <= 60
        assert all(behaviour.parse_answer(a) == (nonce, own) for a in answers)
        assert server._behaviour.dropped >= len(junk) - 1  # the empty datagram may not even arrive


async def test_off_by_default_and_the_welcome_is_unchanged() -> None:
    async with BeaconServer(loopback_config(), create_bundle()) as server:
        assert server._behaviour is None
        async with Peer(
            Identity.generate(),
            [{"hostname": f"127.0.0.1:{server.port}", "cert_hash": server.fingerprint}],
            host="127.0.0.1",
        ) as peer:
            assert await peer.wait_beacons(5) == 1
            assert peer._clients[0].mapping is None


async def test_a_peer_learns_its_mapping_from_the_second_port() -> None:
    port = free_udp_port()
    async with BeaconServer(loopback_config(behaviour_port=port), create_bundle()) as server:
        entry = {"hostname": f"127.0.0.1:{server.port}", "cert_hash": server.fingerprint}
        async with Peer(Identity.generate(), [entry], host="127.0.0.1") as peer:
            assert await peer.wait_beacons(5) == 1
            assert peer._clients[0].mapping == wire.MAPPING_INDEPENDENT  # no NAT on loopback
            assert server._behaviour.answered >= 1
