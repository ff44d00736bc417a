"""The beacon over TLS/TCP: the same service, pinned by the same hash, bounded like UDP, and
hostile input on the port (garbage, plain HTTP, other ALPN, bad length prefixes, slowloris)
closed and counted without a traceback while a legitimate pair still meets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct

import pytest
from attack_support import recorded_beacons
from beacon_test_client import BeaconClient

from beacon import BeaconServer
from certs import create_bundle
from discretpeer.beacon_tcp import TcpChannel, TlsPinMismatch, client_context, open_channel
from discretpeer.endpoint import Endpoint
from discretpeer.proto import wire
from discretpeer.proto.relay_frame import build_relay_frame, parse_relay_frame
from discretpeer.proto.stream_frames import BEACON_TCP_ALPN
from discretpeer.proto.wire import ErrorCode


@pytest.fixture
def start_beacon():
    """In-process beacon; afterwards: no error and no traceback in its log."""
    yield from recorded_beacons(create_bundle)


def refused(server: BeaconServer, reason: str) -> float:
    return server.metrics.registry.get_sample_value("beacon_tcp_refused_total", {"reason": reason}) or 0.0


async def hello(channel: TcpChannel, instance: bytes | None = None) -> wire.Welcome:
    channel.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=instance or os.urandom(wire.INSTANCE_SIZE)))
    items = await asyncio.wait_for(channel.receive(), 3)
    assert isinstance(items[0], wire.Welcome), items
    return items[0]


async def next_message(channel: TcpChannel, kind: type, timeout: float = 3.0):
    while True:
        for item in await asyncio.wait_for(channel.receive(), timeout):
            if isinstance(item, kind):
                return item


async def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def meet_across_legs(server: BeaconServer):
    """A QUIC client and a TLS/TCP client of ``server`` introduced to each other on one token:
    (quic, tcp, the TCP client's instance, token, the QUIC side's and the TCP side's Introduction)."""
    token = os.urandom(wire.TOKEN_SIZE)
    quic = await BeaconClient.connect(server.addresses[0], server.fingerprint)
    tcp = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
    tcp_instance = os.urandom(wire.INSTANCE_SIZE)
    await hello(tcp, tcp_instance)
    quic.announce(add=[token])
    tcp.send(wire.Announce(add=(token,)))
    intro_q = await quic.expect(wire.Introduction)
    intro_t = await next_message(tcp, wire.Introduction)
    return quic, tcp, tcp_instance, token, intro_q, intro_t


async def test_tcp_listens_on_the_udp_port_number_with_the_same_pin(start_beacon):
    async with start_beacon() as server:
        assert server.tcp_port == server.port
        channel = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        welcome = await hello(channel)
        assert welcome.observed.host == "127.0.0.1"
        channel.send(wire.Ping(nonce=7))
        pong = await next_message(channel, wire.Pong)
        assert pong.nonce == 7
        channel.close()
        with pytest.raises(TlsPinMismatch):
            await open_channel("127.0.0.1", server.tcp_port, create_bundle().fingerprint)


async def test_a_run_from_udp_reaches_a_tcp_side_frame_by_frame(start_beacon):
    """Relay frames that reach the beacon in one read (UDP GRO) and go to a side on TLS/TCP
    arrive there one by one, whole and in order."""
    async with start_beacon() as server:
        quic, tcp, tcp_instance, token, _, _ = await meet_across_legs(server)
        quic.send(wire.RelayRequest(token=token, instance=tcp_instance))
        tcp.send(wire.RelayRequest(token=token, instance=quic.instance))
        session = (await quic.expect(wire.RelayGrant)).session_id
        frames = [build_relay_frame(session, b"\x40" + bytes([n]) * 1300) for n in range(12)]
        quic.endpoint.send_run(b"".join(frames), len(frames[0]), server.addresses[0])
        received: list[bytes] = []
        while len(received) < len(frames):
            received += [item for item in await asyncio.wait_for(tcp.receive(), 3) if isinstance(item, bytes)]
        assert received == frames
        assert server.relay.forwarded_runs == 1 and server.relay.forwarded_datagrams == len(frames)
        tcp.close()
        await quic.close()


async def test_extra_tcp_port_serves_too(start_beacon):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    extra = probe.getsockname()[1]
    probe.close()
    async with start_beacon(tcp_extra_ports=[extra]) as server:
        assert ("127.0.0.1", extra) in server.tcp_addresses
        channel = await open_channel("127.0.0.1", extra, server.fingerprint)
        await hello(channel)
        channel.close()


async def test_tcp_and_quic_clients_meet_and_relay_across_legs(start_beacon):
    """UDP↔TCP and TCP↔TCP relay sessions: the beacon forwards the bytes unchanged."""
    async with start_beacon() as server:
        quic, tcp, tcp_instance, token, intro_q, intro_t = await meet_across_legs(server)
        assert intro_q.instance == tcp_instance and intro_t.instance == quic.instance
        quic.send(wire.RelayRequest(token=token, instance=tcp_instance))
        nudge = await next_message(tcp, wire.RelayRequest)  # "the other peer asks for a relay"
        assert (nudge.token, nudge.instance) == (token, quic.instance)
        tcp.send(wire.RelayRequest(token=token, instance=quic.instance))
        grant_q = await quic.expect(wire.RelayGrant)
        grant_t = await next_message(tcp, wire.RelayGrant)
        assert grant_q.session_id == grant_t.session_id
        session = grant_q.session_id

        received: list[bytes] = []
        quic.endpoint.on_datagram = lambda data, source: received.append(data)
        payload = b"\x40" + os.urandom(1200)  # a QUIC-looking packet (the beacon never reads it)
        tcp.send_datagram(build_relay_frame(session, payload))
        await wait_for(lambda: received)
        assert parse_relay_frame(received[0]) == (session, payload)

        quic.endpoint.sendto(build_relay_frame(session, payload[::-1]), server.addresses[0])
        datagram = await next_message(tcp, bytes)
        assert parse_relay_frame(datagram) == (session, payload[::-1])

        # TCP ↔ TCP
        token2 = os.urandom(wire.TOKEN_SIZE)
        other = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        other_instance = os.urandom(wire.INSTANCE_SIZE)
        await hello(other, other_instance)
        tcp.send(wire.Announce(add=(token2,)))
        other.send(wire.Announce(add=(token2,)))
        await next_message(other, wire.Introduction)
        tcp.send(wire.RelayRequest(token=token2, instance=other_instance))
        other.send(wire.RelayRequest(token=token2, instance=tcp_instance))
        grant = await next_message(other, wire.RelayGrant)
        other.send_datagram(build_relay_frame(grant.session_id, b"\x40tcp-to-tcp"))
        datagram = await next_message(tcp, bytes)
        assert parse_relay_frame(datagram) == (grant.session_id, b"\x40tcp-to-tcp")
        assert server.relay.session_count == 2

        # a UDP datagram from the TCP side's address (same number, other protocol) is not that side
        before = server.relay.forwarded_datagrams
        tcp_address = tcp._writer.get_extra_info("sockname")
        impostor = await Endpoint.open("127.0.0.1", tcp_address[1])
        impostor.sendto(build_relay_frame(session, b"\x40spoofed"), server.addresses[0])
        await wait_for(lambda: server.relay.dropped["wrong_source"] >= 1)
        assert server.relay.forwarded_datagrams == before
        impostor.close()
        tcp.close()
        await wait_for(lambda: server.relay.session_count == 0)
        assert server.relay.forwarded_datagrams == before
        other.close()
        await quic.close()


async def _raw(server: BeaconServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.tcp_port)


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float = 3.0) -> None:
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass


async def _tls(server: BeaconServer, alpn: str = BEACON_TCP_ALPN):
    context = client_context()
    context.set_alpn_protocols([alpn])
    reader, writer = await _raw(server)
    await writer.start_tls(context)
    return reader, writer


async def test_hostile_input_is_closed_counted_and_harmless(start_beacon):
    async with start_beacon(tcp_handshake_timeout_seconds=0.3) as server:
        # garbage
        reader, writer = await _raw(server)
        writer.write(os.urandom(64).replace(b"\x16", b"\x17"))
        await _closed_by_server(reader)
        # plain HTTP
        reader, writer = await _raw(server)
        writer.write(b"GET / HTTP/1.1\r\nHost: beacon\r\n\r\n")
        await _closed_by_server(reader)
        # a TLS record header followed by junk
        reader, writer = await _raw(server)
        writer.write(b"\x16\x03\x01\x00\x40" + b"\x00" * 64)
        await _closed_by_server(reader)
        # TLS with another ALPN
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            reader, writer = await _tls(server, "h2")
            await _closed_by_server(reader)
        # slowloris: connect and say nothing
        reader, writer = await _raw(server)
        await _closed_by_server(reader)
        # an oversized length prefix after the handshake
        reader, writer = await _tls(server)
        writer.write(struct.pack("!H", 60000) + b"\x01")
        await _closed_by_server(reader)
        # an oversized relay item
        reader, writer = await _tls(server)
        writer.write(struct.pack("!H", 65535) + b"\x20")
        await _closed_by_server(reader)
        # a truncated prefix then EOF
        reader, writer = await _tls(server)
        writer.write(b"\x00")
        await asyncio.sleep(0.05)
        writer.close()  # TLS close_notify in the middle of an item
        # a malformed message
        reader, writer = await _tls(server)
        writer.write(b"\x00\x01\x7f")
        await _closed_by_server(reader)

        await wait_for(lambda: refused(server, "truncated") >= 1)
        assert refused(server, "garbage") == 1
        assert refused(server, "plain_http") == 1
        assert refused(server, "tls_failed") >= 1
        assert refused(server, "wrong_alpn") == 1
        assert refused(server, "handshake_timeout") == 1
        assert refused(server, "too_large") == 2
        assert refused(server, "malformed") == 1
        assert server.tcp.handshaking == 0
        await wait_for(lambda: server.connection_count == 0)

        # others unaffected: a pair still meets over TCP
        token = os.urandom(wire.TOKEN_SIZE)
        a = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        b = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        await hello(a)
        await hello(b)
        a.send(wire.Announce(add=(token,)))
        b.send(wire.Announce(add=(token,)))
        await next_message(a, wire.Introduction)
        await next_message(b, wire.Introduction)
        a.close()
        b.close()


async def test_tcp_handshakes_per_ip_and_connections_are_bounded(start_beacon):
    async with start_beacon(handshake_burst_per_ip=3, handshakes_per_second_per_ip=0.01) as server:
        channels = [await open_channel("127.0.0.1", server.tcp_port, server.fingerprint) for _ in range(3)]
        with pytest.raises(ConnectionError):
            await open_channel("127.0.0.1", server.tcp_port, server.fingerprint, timeout=2)
        assert (
            server.metrics.registry.get_sample_value("beacon_handshakes_refused_total", {"reason": "rate_limited"}) == 1
        )
        for channel in channels:
            channel.close()
    async with start_beacon(max_connections_per_ip=1) as server:
        first = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        await hello(first)
        second = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        second.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE)))
        error = await next_message(second, wire.Error)
        assert error.code == ErrorCode.TOO_MANY_CONNECTIONS
        first.close()
        second.close()


async def test_tcp_slow_reader_is_dropped_and_others_go_on(start_beacon):
    async with start_beacon(
        max_unsent_bytes=4096, frames_per_second_per_connection=10000.0, frame_burst_per_connection=100000
    ) as server:
        import socket

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the beacon's queue fills
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.tcp_port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        await writer.start_tls(client_context())
        writer.write(wire.encode(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE))))
        # ask for many answers and never read them
        ping = wire.encode(wire.Ping(nonce=1))
        for _ in range(100):
            writer.write(ping * 500)
            await asyncio.sleep(0.01)
        await wait_for(
            lambda: (
                (server.metrics.registry.get_sample_value("beacon_rejections_total", {"reason": "slow_reader"}) or 0)
                >= 1
            ),
            timeout=10,
        )
        writer.close()
        good = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        await hello(good)
        good.close()


async def test_silent_tcp_client_is_closed_after_the_idle_timeout(start_beacon):
    async with start_beacon(idle_timeout_seconds=1.0) as server:
        channel = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        await hello(channel)
        assert server.connection_count == 1
        error = await next_message(channel, wire.Error, timeout=5)
        assert error.code == ErrorCode.IDLE_TIMEOUT
        await wait_for(lambda: server.connection_count == 0)
        channel.close()


async def test_stop_tells_tcp_clients_and_frees_everything(start_beacon):
    async with start_beacon() as server:
        channel = await open_channel("127.0.0.1", server.tcp_port, server.fingerprint)
        await hello(channel)
        idle = await _raw(server)  # a TCP connection still in its TLS handshake
        await server.stop("maintenance")
        error = await next_message(channel, wire.Error)
        assert error.code == ErrorCode.SHUTTING_DOWN and error.fatal and "maintenance" in error.message
        await _closed_by_server(idle[0])
        assert server.connection_count == 0 and not server.tcp.clients and server.tcp.handshaking == 0
        channel.close()
