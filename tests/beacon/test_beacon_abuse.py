"""Relay and meeting abuse over real QUIC on loopback (issue 12, items 3–5).

* reflection: a copy of a client's packet sent from another address (127.0.0.2: loopback routes
  all of 127/8) must not make the beacon forward relay traffic or name that address in an
  introduction, because the address never proved it receives;
* hijack: relay grants follow introductions between connections, not claimed instance values;
* squatting: many connections holding a meeting's token do not keep the real pair from meeting,
  and a refused peer is told TOKEN_FULL.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from attack_support import recorded_beacons
from beacon_test_client import BeaconClient

from discretpeer.proto import wire
from discretpeer.proto.relay_frame import RELAY_DATA, build_relay_frame
from discretpeer.proto.wire import ErrorCode

N_FRAMES = 40


@pytest.fixture
def start_beacon():
    """Like the shared fixture, and afterwards: no error and no traceback in the beacon's log."""
    yield from recorded_beacons()


class Counter:
    """Everything that reaches an endpoint's non-QUIC hook, and relay frames by session."""

    def __init__(self, client: BeaconClient) -> None:
        self.client = client
        self.frames: list[bytes] = []
        client.endpoint.on_datagram = lambda data, source: self.frames.append(data)


class Spoofer(asyncio.DatagramProtocol):
    """A bare UDP socket on another loopback address: counts every byte that reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.sent = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]  # a test stand-in
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)

    def send(self, data: bytes, addr) -> None:
        assert self.transport is not None
        self.sent += len(data)
        self.transport.sendto(data, addr)

    @property
    def bytes_received(self) -> int:
        return sum(len(d) for d in self.received)

    @property
    def relay_bytes(self) -> int:
        return sum(len(d) for d in self.received if d[:1] == bytes([RELAY_DATA]))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]


async def spoofer(host: str = "127.0.0.2") -> Spoofer:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Spoofer, local_addr=(host, 0))
    return protocol


def send_from(client: BeaconClient, message: wire.Message, via: Spoofer) -> None:
    """Queue ``message`` on the client's connection and send the resulting QUIC datagrams from
    ``via`` instead of the client's socket: the beacon sees a valid packet from a new address."""
    quic = client.protocol._quic
    quic.send_stream_data(0, wire.encode(message))
    for data, addr in quic.datagrams_to_send(now=asyncio.get_running_loop().time()):
        via.send(data, addr)


async def introduced(server, token: bytes, **kwargs) -> tuple[BeaconClient, BeaconClient]:
    a = await BeaconClient.connect(server.addresses[0], server.fingerprint, **kwargs)
    b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
    a.announce(add=[token])
    b.announce(add=[token])
    await a.expect(wire.Introduction)
    await b.expect(wire.Introduction)
    return a, b


async def wait_for(predicate, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- item 3: reflection ---------------------------------------------------------------------


async def test_spoofed_source_gets_no_relay_traffic_and_relay_keeps_working(start_beacon):
    async with start_beacon() as server:
        beacon = server.addresses[0]
        t = os.urandom(32)
        a, b = await introduced(server, t)
        ca, cb = Counter(a), Counter(b)
        victim = await spoofer()
        # the attacker (client a) sends its relay request in a packet from the victim's address
        send_from(a, wire.RelayRequest(token=t, instance=b.instance), victim)
        await asyncio.sleep(0.05)
        b.send(wire.RelayRequest(token=t, instance=a.instance))
        grant_b = await b.expect(wire.RelayGrant)
        a.send(wire.Ping(nonce=1))  # a's real address speaks again (QUIC moves back to it)
        grant_a = await a.expect(wire.RelayGrant, timeout=3)
        assert grant_a.session_id == grant_b.session_id
        frame = build_relay_frame(grant_b.session_id, b"\x4f" + os.urandom(1100))
        for _ in range(N_FRAMES):
            b.endpoint.sendto(frame, beacon)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)
        assert victim.relay_bytes == 0, f"{victim.relay_bytes} relay bytes reflected to the spoofed address"
        await wait_for(lambda: len(ca.frames) == N_FRAMES)
        # what QUIC itself sent there (path challenge) stays within 3x what came from there
        assert victim.bytes_received <= 3 * victim.sent
        # the relay keeps working both ways for the real peers
        a.endpoint.sendto(frame, beacon)
        await wait_for(lambda: len(cb.frames) == 1)
        assert server.relay.forwarded_datagrams == N_FRAMES + 1
        assert [e[1] for e in server.log.events].count("relay_session_started") == 1  # the log is recorded
        victim.transport.close()
        await a.close()
        await b.close()


async def test_spoofed_announce_does_not_change_the_introduced_address(start_beacon):
    async with start_beacon() as server:
        t = os.urandom(32)
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        victim = await spoofer()
        send_from(a, wire.Announce(add=(t,)), victim)
        await asyncio.sleep(0.05)
        b.announce(add=[t])
        about_a = await b.expect(wire.Introduction)
        assert about_a.instance == a.instance
        assert about_a.observed.to_socket() == a.local_address, about_a.observed
        victim.transport.close()
        await a.close()
        await b.close()


async def test_relay_follows_a_validated_migration(start_beacon):
    """A NAT rebinding: a's connection moves to a new address that answers QUIC's path
    challenge; relay frames from there are forwarded and the other side's reach it."""
    async with start_beacon() as server:
        beacon = server.addresses[0]
        t = os.urandom(32)
        a, b = await introduced(server, t)
        a.send(wire.RelayRequest(token=t, instance=b.instance))
        b.send(wire.RelayRequest(token=t, instance=a.instance))
        sid = (await a.expect(wire.RelayGrant)).session_id
        await b.expect(wire.RelayGrant)
        cb = Counter(b)
        loop = asyncio.get_running_loop()
        quic = a.protocol._quic
        moved = await spoofer("127.0.0.3")

        def answer(data: bytes, addr) -> None:  # a's QUIC, now reading and writing on the new socket
            moved.received.append(data)
            if data[0] & 0x40 and data[0] != RELAY_DATA:
                quic.receive_datagram(data, addr, now=loop.time())
                for out, to in quic.datagrams_to_send(now=loop.time()):
                    moved.send(out, to)

        moved.datagram_received = answer  # type: ignore[method-assign]  # patched for this test or benchmark
        send_from(a, wire.Ping(nonce=7), moved)
        await wait_for(lambda: moved.address in [p.addr[:2] for p in server_paths(server, validated=True)])
        frame = build_relay_frame(sid, b"\x4f" + os.urandom(500))
        moved.send(frame, beacon)
        await wait_for(lambda: len(cb.frames) == 1)
        b.endpoint.sendto(frame, beacon)
        await wait_for(lambda: moved.relay_bytes == len(frame))
        assert server.relay.dropped["wrong_source"] == 0 and server.relay.forwarded_datagrams == 2
        moved.transport.close()
        await a.close()
        await b.close()


def server_paths(server, validated: bool):
    return [
        path
        for peer in server._clients.values()
        for path in peer.protocol._quic._network_paths
        if path.is_validated == validated
    ]


# --- item 4: grants follow introductions ------------------------------------------------------


async def test_relay_request_without_introduction_is_refused(start_beacon):
    async with start_beacon() as server:
        t = os.urandom(32)
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        # both ask for each other without any announce: the beacon introduced nobody
        a.send(wire.RelayRequest(token=t, instance=b.instance))
        b.send(wire.RelayRequest(token=t, instance=a.instance))
        for client in (a, b):
            error = await client.expect(wire.Error)
            assert error.code == ErrorCode.RELAY_NOT_INTRODUCED and not error.fatal
            assert "introduc" in error.message
        assert server.relay.session_count == 0 and server.relay.pending_count == 0
        metrics = server.metrics.render().decode()
        assert 'beacon_relay_refusals_total{reason="relay_not_introduced"} 2.0' in metrics
        a.send(wire.Ping(nonce=3))  # not fatal: the connection serves on
        assert (await a.expect(wire.Pong)).nonce == 3
        await a.close()
        await b.close()


async def test_claiming_anothers_instance_does_not_take_its_relay(start_beacon):
    async with start_beacon() as server:
        beacon = server.addresses[0]
        t = os.urandom(32)
        a, b = await introduced(server, t)
        # the attacker knows the token and b's instance, and asks first
        x = await BeaconClient.connect(beacon, server.fingerprint, instance=b.instance)
        x.announce(add=[t])
        about_x = await a.expect(wire.Introduction)  # a is introduced to it (the beacon cannot tell)
        assert about_x.instance == b.instance
        assert (await x.expect(wire.Introduction)).instance == a.instance
        cx = Counter(x)
        x.send(wire.RelayRequest(token=t, instance=a.instance))
        await x.expect_nothing(0.1)
        a.send(wire.RelayRequest(token=t, instance=b.instance))
        b.send(wire.RelayRequest(token=t, instance=a.instance))
        grant_a = await a.expect(wire.RelayGrant)
        grant_b = await b.expect(wire.RelayGrant)
        assert grant_a.session_id == grant_b.session_id
        await x.expect_nothing(0.2)  # no grant for the impostor
        cb = Counter(b)
        frame = build_relay_frame(grant_a.session_id, b"\x4f" + os.urandom(800))
        for _ in range(N_FRAMES):
            a.endpoint.sendto(frame, beacon)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)
        assert cx.frames == []  # 0 of N_FRAMES to the attacker
        await wait_for(lambda: len(cb.frames) == N_FRAMES)
        assert server.relay.session_count == 1
        for client in (a, b, x):
            await client.close()


# --- item 5: squatting ------------------------------------------------------------------------


async def squat(server, token: bytes, hosts: list[str], per_host: int, extra_tokens: int = 0) -> list[BeaconClient]:
    squatters = []
    for host in hosts:
        for _ in range(per_host):
            client = await BeaconClient.connect(server.addresses[0], server.fingerprint, local_host=host)
            client.announce(add=[token, *(os.urandom(32) for _ in range(extra_tokens))])
            squatters.append(client)
    await asyncio.sleep(0.1)
    return squatters


async def meet(server, token: bytes, hosts: tuple[str, str]) -> tuple[BeaconClient, BeaconClient]:
    """Two real peers announce the token; each must receive an introduction of the other."""
    a = await BeaconClient.connect(server.addresses[0], server.fingerprint, local_host=hosts[0])
    b = await BeaconClient.connect(server.addresses[0], server.fingerprint, local_host=hosts[1])
    a.announce(add=[token])
    await asyncio.sleep(0.05)
    b.announce(add=[token])
    for me, other in ((a, b), (b, a)):
        while True:
            message = await me.recv(timeout=3)
            if isinstance(message, wire.Introduction) and message.instance == other.instance:
                break
    return a, b


async def churn_and_check(server, token: bytes, squatters, a, b, *, rounds: int, pause: float) -> None:
    """The squatters withdraw and announce ``token`` again, ``rounds`` times: the real peers ``a``
    and ``b`` still hold it afterwards. Closes every client."""
    for _ in range(rounds):
        for client in squatters:
            client.announce(withdraw=[token], add=[token])
        await asyncio.sleep(pause)
    keys = {server._clients[k].address for k in server.meetings.holders(token)}
    assert a.local_address in keys and b.local_address in keys
    for client in (*squatters, a, b):
        await client.close()


async def test_squatting_from_many_ports_of_one_address_does_not_block_a_meeting(start_beacon):
    async with start_beacon() as server:
        t = os.urandom(32)
        squatters = await squat(server, t, ["127.0.0.1"], 24, extra_tokens=8)
        assert len(server.meetings.holders(t)) <= 4  # the address's share of the token
        a, b = await meet(server, t, ("127.0.0.2", "127.0.0.3"))
        # churning (withdraw + announce again, over and over) does not push them out
        await churn_and_check(server, t, squatters, a, b, rounds=3, pause=0.05)


async def test_squatting_from_several_addresses_fills_no_more_than_their_share(start_beacon):
    async with start_beacon(max_peers_per_token=8) as server:
        t = os.urandom(32)
        hosts = [f"127.0.0.{n}" for n in range(10, 14)]  # 4 addresses × 2 = all 8 slots
        squatters = await squat(server, t, hosts, 2)
        assert len(server.meetings.holders(t)) == 8
        a, b = await meet(server, t, ("127.0.0.2", "127.0.0.3"))
        evicted = 0
        for client in squatters:  # two of them were told their place went to a real peer
            while True:
                try:
                    message = await client.recv(timeout=0.05)
                except TimeoutError:
                    break
                if isinstance(message, wire.Error) and message.code == ErrorCode.TOKEN_FULL:
                    assert wire.token_of_full_message(message.message) == t
                    evicted += 1
        assert evicted == 2
        await churn_and_check(server, t, squatters, a, b, rounds=1, pause=0.1)


async def test_genuinely_full_token_is_refused_with_token_full(start_beacon):
    async with start_beacon(max_peers_per_token=2) as server:
        t = os.urandom(32)
        squatters = await squat(server, t, ["127.0.0.10", "127.0.0.11"], 1)
        late = await BeaconClient.connect(server.addresses[0], server.fingerprint, local_host="127.0.0.12")
        late.announce(add=[t])
        error = await late.expect(wire.Error)
        assert error.code == ErrorCode.TOKEN_FULL and not error.fatal
        assert wire.token_of_full_message(error.message) == t and "full" in error.message
        for client in (*squatters, late):
            await client.close()
