"""Peers whose UDP to the beacon is blocked: the beacon over TLS/TCP, relay across UDP/TCP legs.

"Blocked" on loopback: the peer is given a beacon UDP port where nothing listens, and the
beacon's real TCP port (``tcp_port`` in the beacon entry); its QUIC attempts go unanswered."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from discretpeer import Identity
from discretpeer.beacon_client import udp_unreachable
from tests.conftest import beacon_entry
from tests.support.peers import carried, connect_both, loopback_peer


def dead_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def tcp_only_entry(server) -> dict:
    return {"hostname": f"127.0.0.1:{dead_udp_port()}", "cert_hash": server.fingerprint, "tcp_port": server.tcp_port}


async def test_udp_blocked_peer_registers_over_tcp(beacon):
    async with loopback_peer(Identity.generate(), [tcp_only_entry(beacon)]) as peer:
        deadline = time.monotonic() + 5
        while not any(s.state == "connected" for s in peer.beacon_status):
            assert time.monotonic() < deadline, peer.beacon_status
            await asyncio.sleep(0.02)
        status = peer.beacon_status[0]
        assert status.transport == "tcp"
        assert status.address == ("127.0.0.1", beacon.tcp_port)
        assert beacon.connection_count == 1
        assert udp_unreachable(peer._clients)  # so punching is skipped: relay at once


async def test_udp_peer_prefers_quic(beacon):
    async with loopback_peer(Identity.generate(), [beacon_entry(beacon)]) as peer:
        deadline = time.monotonic() + 5
        while not any(s.state == "connected" for s in peer.beacon_status):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert peer.beacon_status[0].transport == "udp"
        assert peer.beacon_status[0].udp_works is True
        assert not udp_unreachable(peer._clients)


async def test_udp_blocked_peer_connects_through_a_tcp_relay_leg_and_carries_a_stream(beacon):
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [tcp_only_entry(beacon)], direct=False) as pa,
        loopback_peer(ib, [beacon_entry(beacon)]) as pb,
    ):
        ca, cb = await connect_both(pa, pb, "tcp meeting", 15)
        assert ca.path == cb.path == "relay"
        assert pa.beacon_status[0].transport == "tcp"
        assert pb.beacon_status[0].transport == "udp"
        payload = os.urandom(300_000)
        r, w = await ca.open_stream()
        w.write(payload)
        w.write_eof()
        r2, w2 = await cb.accept_stream()
        assert await r2.read() == payload
        w2.write(payload[::-1])
        w2.write_eof()
        assert await r.read() == payload[::-1]
        assert beacon.relay.forwarded_bytes > 600_000


async def test_two_udp_blocked_peers_connect_over_tcp_legs(beacon):
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [tcp_only_entry(beacon)], direct=False) as pa,
        loopback_peer(ib, [tcp_only_entry(beacon)], direct=False) as pb,
    ):
        ca, cb = await connect_both(pa, pb, "tcp meeting 2", 15)
        assert ca.path == cb.path == "relay"
        assert await carried(ca, cb, b"over two TCP legs") == b"over two TCP legs"


async def test_the_udp_peer_asks_for_the_relay_at_once_when_the_beacon_says_the_other_did(beacon):
    """B would wait 30 s before asking for a relay; the beacon tells it A asked (A's UDP is
    blocked), so the connection is up in a few seconds."""
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [tcp_only_entry(beacon)], direct=False) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], relay_after=30.0) as pb,
    ):
        started = time.monotonic()
        ca, cb = await connect_both(pa, pb, "hurry", 8)
        assert ca.path == cb.path == "relay"
        assert time.monotonic() - started < 5
        print(f"\nudp-blocked <-> udp peer on loopback: introduction -> verified {1000 * cb.time_to_connect:.0f} ms")


class UdpGate(asyncio.DatagramProtocol):
    """A UDP port in front of the beacon that drops everything until opened (a network that
    blocks UDP, then does not): forwards client → beacon and back while open."""

    def __init__(self, beacon_address: tuple[str, int], delay: float = 0.0) -> None:
        self.beacon_address = beacon_address
        self.delay = delay  # one way, each direction: a slow path rather than a blocked one
        self.open = False
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        gate = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if gate.open and gate.client is not None and gate.front is not None:
                    gate.later(gate.front.sendto, data, gate.client)

        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=("127.0.0.1", 0))
        return self.front.get_extra_info("sockname")[1]

    def later(self, send, data, addr) -> None:
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, send, data, addr)
        else:
            send(data, addr)

    def datagram_received(self, data, addr):
        if self.open and self.back is not None:
            self.client = addr
            self.later(self.back.sendto, data, self.beacon_address)

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


async def test_moves_back_to_udp_when_it_works_again(beacon, monkeypatch):
    import discretpeer.beacon_client as beacon_client

    monkeypatch.setattr(beacon_client, "UDP_RETRY_INTERVAL", 0.3)
    gate = UdpGate(("127.0.0.1", beacon.port))
    port = await gate.start()
    entry = {"hostname": f"127.0.0.1:{port}", "cert_hash": beacon.fingerprint, "tcp_port": beacon.tcp_port}
    try:
        async with loopback_peer(Identity.generate(), [entry]) as peer:
            deadline = time.monotonic() + 5
            while peer.beacon_status[0].transport != "tcp":
                assert time.monotonic() < deadline, peer.beacon_status
                await asyncio.sleep(0.02)
            assert peer.beacon_status[0].udp_works is False
            await asyncio.sleep(0.5)
            assert peer.beacon_status[0].transport == "tcp"  # UDP still blocked: stays
            gate.open = True
            deadline = time.monotonic() + 10
            while peer.beacon_status[0].transport != "udp" or peer.beacon_status[0].state != "connected":
                assert time.monotonic() < deadline, peer.beacon_status
                await asyncio.sleep(0.02)
            assert peer.beacon_status[0].udp_works is True
            assert "UDP works again" in " ".join(peer.beacon_status[0].history)
            deadline = time.monotonic() + 5
            while beacon.connection_count != 1:  # the TCP connection is gone
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
    finally:
        gate.close()


async def test_slow_udp_loses_the_race_then_the_client_moves_to_it(beacon):
    """QUIC is slow (0.4 s each way), not blocked: TLS/TCP wins the race, and as soon as the same
    QUIC attempt completes the client moves to UDP (no 15 s retry wait)."""
    gate = UdpGate(("127.0.0.1", beacon.port), delay=0.4)
    gate.open = True
    port = await gate.start()
    entry = {"hostname": f"127.0.0.1:{port}", "cert_hash": beacon.fingerprint, "tcp_port": beacon.tcp_port}
    try:
        async with loopback_peer(Identity.generate(), [entry]) as peer:
            seen = set()
            deadline = time.monotonic() + 8
            while not (
                "tcp" in seen
                and peer.beacon_status[0].transport == "udp"
                and peer.beacon_status[0].state == "connected"
            ):
                assert time.monotonic() < deadline, (seen, peer.beacon_status)
                if peer.beacon_status[0].state == "connected":
                    seen.add(peer.beacon_status[0].transport)
                await asyncio.sleep(0.01)
    finally:
        gate.close()


async def test_connect_error_says_the_beacons_were_reached_over_tcp_only(beacon):
    from discretpeer import ConnectError

    async with loopback_peer(Identity.generate(), [tcp_only_entry(beacon)]) as peer:
        deadline = time.monotonic() + 5
        while peer.beacon_status[0].state != "connected":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        try:
            await peer.connect("nobody comes", expect=Identity.generate().peer_id, timeout=1.0)
        except ConnectError as exc:
            text = str(exc)
        else:
            raise AssertionError("connected to nobody")
        assert "over TLS/TCP only (no beacon reachable over UDP: no punching, relay asked at once)" in text
