"""The beacon over real QUIC on loopback: handshake, pinning, introductions, limits, stop."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from beacon_test_client import BeaconClient, Closed, PinMismatch

from discretpeer.proto import wire
from discretpeer.proto.wire import Address, ErrorCode


def token(n: int | None = None) -> bytes:
    return os.urandom(wire.TOKEN_SIZE) if n is None else n.to_bytes(wire.TOKEN_SIZE, "big")


async def meet(a: BeaconClient, b: BeaconClient) -> bytes:
    """``a`` and ``b`` announce one fresh token and are both introduced; returns the token."""
    t = token()
    a.announce(add=[t])
    b.announce(add=[t])
    await a.expect(wire.Introduction)
    await b.expect(wire.Introduction)
    return t


async def met_pair(connect) -> tuple[BeaconClient, BeaconClient, bytes]:
    """Two new clients announce one fresh token and are both introduced; returns them and it."""
    a, b = await connect(), await connect()
    return a, b, await meet(a, b)


async def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_welcome_reports_observed_address(beacon, connect):
    client = await connect()
    assert client.welcome.version == wire.PROTOCOL_VERSION
    assert client.welcome.observed == Address.from_socket(client.local_address)
    assert client.welcome.max_tokens == beacon.config.max_tokens_per_connection


async def test_wrong_pin_is_refused(beacon):
    wrong = "A" * 43
    with pytest.raises(PinMismatch):
        await BeaconClient.connect(beacon.addresses[0], wrong)
    # and the beacon keeps serving
    client = await BeaconClient.connect(beacon.addresses[0], beacon.fingerprint)
    await client.close()


async def test_two_clients_same_token_are_introduced(connect):
    t = token()
    candidates_a = (Address("192.168.1.10", 5000), Address("fd00::1", 5000))
    a = await connect()
    b = await connect()
    a.announce(add=[t], candidates=candidates_a)
    await a.expect_nothing(0.1)
    b.announce(add=[t], candidates=(Address("10.0.0.7", 6000),))
    intro_a = await a.expect(wire.Introduction)
    intro_b = await b.expect(wire.Introduction)
    assert intro_a == wire.Introduction(
        token=t,
        instance=b.instance,
        observed=Address.from_socket(b.local_address),
        candidates=(Address("10.0.0.7", 6000),),
    )
    assert intro_b == wire.Introduction(
        token=t, instance=a.instance, observed=Address.from_socket(a.local_address), candidates=candidates_a
    )
    # peers behind the same public IP (all of them here: 127.0.0.1) are introduced


async def test_other_token_gets_nothing(connect):
    t = token()
    a, b, c = await connect(), await connect(), await connect()
    c.announce(add=[token()])
    a.announce(add=[t])
    b.announce(add=[t])
    await a.expect(wire.Introduction)
    await b.expect(wire.Introduction)
    await c.expect_nothing(0.3)


async def test_withdraw_then_reannounce_introduces_again(connect):
    a, b, t = await met_pair(connect)
    b.announce(withdraw=[t])
    await asyncio.sleep(0.05)
    await a.expect_nothing(0.1)
    b.announce(add=[t])
    assert (await a.expect(wire.Introduction)).instance == b.instance
    assert (await b.expect(wire.Introduction)).instance == a.instance


async def test_disconnect_removes_entry(beacon, connect):
    t = token()
    a, b = await connect(), await connect()
    a.announce(add=[t])
    await wait_for(lambda: beacon.meetings.holders(t))
    a.protocol.close()
    await wait_for(lambda: not beacon.meetings.holders(t))
    b.announce(add=[t])
    await b.expect_nothing(0.3)
    await wait_for(lambda: beacon.connection_count == 1)


async def test_three_peers_on_one_token(connect):
    t = token()
    a, b, c = await connect(), await connect(), await connect()
    a.announce(add=[t])
    b.announce(add=[t])
    assert (await a.expect(wire.Introduction)).instance == b.instance
    assert (await b.expect(wire.Introduction)).instance == a.instance
    c.announce(add=[t])
    got_c = {(await c.expect(wire.Introduction)).instance for _ in range(2)}
    assert got_c == {a.instance, b.instance}
    assert (await a.expect(wire.Introduction)).instance == c.instance
    assert (await b.expect(wire.Introduction)).instance == c.instance


async def test_peers_per_token_are_capped(start_beacon):
    t = token()
    async with start_beacon(max_peers_per_token=2) as server:
        clients = [await BeaconClient.connect(server.addresses[0], server.fingerprint) for _ in range(3)]
        for client in clients:
            client.announce(add=[t])
        await clients[0].expect(wire.Introduction)
        await clients[1].expect(wire.Introduction)
        refused = await clients[2].expect(wire.Error)  # told why, never left waiting in silence
        assert refused.code == ErrorCode.TOKEN_FULL and not refused.fatal
        assert wire.token_of_full_message(refused.message) == t and "full" in refused.message
        await clients[2].expect_nothing(0.3)
        assert len(server.meetings.holders(t)) == 2
        for client in clients:
            await client.close()


async def test_same_token_twice_no_self_or_duplicate(connect):
    t = token()
    a, b = await connect(), await connect()
    a.announce(add=[t, t])
    a.announce(add=[t])
    await a.expect_nothing(0.2)
    b.announce(add=[t])
    await a.expect(wire.Introduction)
    await b.expect(wire.Introduction)
    a.announce(add=[t])
    await a.expect_nothing(0.2)
    await b.expect_nothing(0.05)


async def test_candidates_are_replaced(connect):
    t = token()
    a, b = await connect(), await connect()
    a.announce(candidates=(Address("10.1.1.1", 1000),))
    a.announce(add=[t], candidates=(Address("10.2.2.2", 2000),))
    b.announce(add=[t])
    assert (await b.expect(wire.Introduction)).candidates == (Address("10.2.2.2", 2000),)


async def test_new_candidates_after_the_introduction_reach_the_partner(connect):
    """A port mapping granted after two peers met: the partner hears of it (else it stays relayed)."""
    a, b, t = await met_pair(connect)
    mapped = (Address("198.51.100.7", 4242),)
    a.announce(candidates=mapped)
    update = await b.expect(wire.Introduction)
    assert (update.token, update.instance, update.candidates) == (t, a.instance, mapped)
    await a.expect_nothing(0.1)
    a.announce(candidates=mapped)  # unchanged: nobody is told again
    await b.expect_nothing(0.2)


async def test_ping_pong(connect):
    a = await connect()
    a.send(wire.Ping(nonce=123456789))
    assert await a.expect(wire.Pong) == wire.Pong(nonce=123456789)


async def test_unsupported_version(beacon):
    client = await BeaconClient.connect(beacon.addresses[0], beacon.fingerprint, hello=False)
    client.send(wire.Hello(version=999, instance=os.urandom(16)))
    error = await client.expect(wire.Error)
    assert error.code == ErrorCode.UNSUPPORTED_VERSION and error.fatal
    terminated = await client.wait_closed()
    assert terminated.error_code == ErrorCode.UNSUPPORTED_VERSION
    await client.close()


async def test_first_frame_must_be_hello(beacon):
    client = await BeaconClient.connect(beacon.addresses[0], beacon.fingerprint, hello=False)
    client.announce(add=[token()])
    error = await client.expect(wire.Error)
    assert error.code == ErrorCode.UNEXPECTED_MESSAGE and error.fatal
    await client.wait_closed()
    await client.close()


async def test_too_many_tokens_is_rejected_not_fatal(start_beacon):
    async with start_beacon(max_tokens_per_connection=3) as server:
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        t1, t2 = token(), token()
        a.announce(add=[t1, t2])
        a.announce(add=[token(), token()])
        error = await a.expect(wire.Error)
        assert error.code == ErrorCode.TOO_MANY_TOKENS and not error.fatal
        assert server.meetings.tokens_held == 2  # the rejected announce changed nothing
        b.announce(add=[t2])
        assert (await a.expect(wire.Introduction)).token == t2  # connection still served
        await b.expect(wire.Introduction)
        await a.close()
        await b.close()


async def test_oversized_frame_is_fatal_others_unaffected(beacon, connect):
    a, b, c = await connect(), await connect(), await connect()
    a.send_raw((5000).to_bytes(2, "big") + b"\x03" + b"\0" * 100)
    error = await a.expect(wire.Error)
    assert error.code == ErrorCode.FRAME_TOO_LARGE and error.fatal
    await a.wait_closed()
    await meet(b, c)


async def test_malformed_frame(connect):
    a = await connect()
    a.send_raw(b"\x00\x03\x03\x01\x00")  # announce claiming one token, truncated
    error = await a.expect(wire.Error)
    assert error.code == ErrorCode.MALFORMED and error.fatal


async def test_too_many_connections_from_one_ip(start_beacon):
    async with start_beacon(max_connections_per_ip=2) as server:
        addr, pin = server.addresses[0], server.fingerprint
        a = await BeaconClient.connect(addr, pin)
        b = await BeaconClient.connect(addr, pin)
        c = await BeaconClient.connect(addr, pin, hello=False)
        c.send(wire.Hello(version=1, instance=os.urandom(16)))
        error = await c.expect(wire.Error)
        assert error.code == ErrorCode.TOO_MANY_CONNECTIONS and error.fatal
        assert (await c.wait_closed()).error_code == ErrorCode.TOO_MANY_CONNECTIONS
        await c.close()
        await meet(a, b)
        # a slot frees when a connection goes
        await a.close()
        await wait_for(lambda: server.connection_count == 1)
        d = await BeaconClient.connect(addr, pin)
        await d.close()
        await b.close()


async def test_handshake_rate_limit_refuses_silently(start_beacon):
    async with start_beacon(handshakes_per_second_per_ip=0.01, handshake_burst_per_ip=2) as server:
        addr, pin = server.addresses[0], server.fingerprint
        a = await BeaconClient.connect(addr, pin)
        b = await BeaconClient.connect(addr, pin)
        with pytest.raises((asyncio.TimeoutError, ConnectionError)):
            await BeaconClient.connect(addr, pin, timeout=0.5)
        assert "rate_limited" in server.metrics.render().decode()
        t = token()
        a.announce(add=[t])
        b.announce(add=[t])
        await a.expect(wire.Introduction)
        await a.close()
        await b.close()


async def test_frame_rate_limit(start_beacon):
    async with start_beacon(frames_per_second_per_connection=1, frame_burst_per_connection=5) as server:
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        for n in range(10):
            a.send(wire.Ping(nonce=n))
        kinds = []
        with pytest.raises(Closed):
            while True:
                kinds.append(await a.recv())
        assert [m.nonce for m in kinds if isinstance(m, wire.Pong)] == [0, 1, 2, 3]
        assert kinds[-1].code == ErrorCode.RATE_LIMITED
        await a.close()


async def test_retry_always(start_beacon):
    async with start_beacon(retry="always") as server:
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        assert server.metrics.retries._value.get() >= 1
        a.send(wire.Ping(nonce=1))
        await a.expect(wire.Pong)
        await a.close()


async def test_hello_timeout(start_beacon):
    async with start_beacon(hello_timeout_seconds=0.2) as server:
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint, hello=False)
        assert (await a.wait_closed(3)).error_code == ErrorCode.IDLE_TIMEOUT
        await a.close()


async def test_random_datagrams_leave_beacon_serving(beacon, connect):
    import random
    import socket

    rng = random.Random(1234)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for n in range(2000):
            size = rng.choice([1, 2, 9, 10, 20, 100, 1200, 1300, 1500])
            data = bytearray(rng.randbytes(size))
            if n % 3 == 0:
                data[0] |= 0x40  # looks like QUIC
            if n % 5 == 0 and size >= 1200:
                data[0] = 0xC0  # long header Initial
                data[1:5] = (1).to_bytes(4, "big")
            sock.sendto(bytes(data), beacon.addresses[0])
            if n % 200 == 0:
                await asyncio.sleep(0)
    finally:
        sock.close()
    await asyncio.sleep(0.1)
    await met_pair(connect)


async def test_graceful_stop_tells_clients(start_beacon):
    async with start_beacon() as server:
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        await server.stop()
        error = await a.expect(wire.Error)
        assert error.code == ErrorCode.SHUTTING_DOWN and error.fatal
        assert (await a.wait_closed()).error_code == ErrorCode.SHUTTING_DOWN
        await a.close()


async def test_restart_on_same_port_same_pin(start_beacon):
    from certs import create_bundle

    bundle = create_bundle()
    async with start_beacon(bundle=bundle) as server:
        port = server.port
        a = await BeaconClient.connect(server.addresses[0], bundle.fingerprint)
        await a.close()
    async with start_beacon(bundle=bundle, port=port) as server:
        assert server.port == port
        b = await BeaconClient.connect(("127.0.0.1", port), bundle.fingerprint)
        await b.close()


async def test_ipv6_loopback(start_beacon):
    async with start_beacon(ipv6_enabled=True, ipv6_host="::1", ipv6_port=0) as server:
        assert server.ipv6_port
        a = await BeaconClient.connect(("::1", server.ipv6_port), server.fingerprint, local_host="::1")
        b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        assert a.welcome.observed.host == "::1"
        t = token()
        a.announce(add=[t])
        b.announce(add=[t])
        assert (await b.expect(wire.Introduction)).observed == Address.from_socket(a.local_address)
        assert (await a.expect(wire.Introduction)).observed == Address.from_socket(b.local_address)
        await a.close()
        await b.close()


async def test_metrics_endpoint(start_beacon):
    async with start_beacon(metrics_enabled=True, metrics_port=0) as server:
        a = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        b = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        await meet(a, b)
        host, port = server.metrics_address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        assert body.startswith("HTTP/1.1 200")
        assert "beacon_connections_total 2.0" in body
        assert "beacon_announces_total 2.0" in body
        assert "beacon_introductions_total 2.0" in body
        assert "beacon_open_connections 2.0" in body
        assert "beacon_tokens_held 2.0" in body
        assert "beacon_relay_bytes_total 0.0" in body
        await a.close()
        await b.close()


async def test_retry_auto_under_load(start_beacon):
    async with start_beacon(retry="auto", retry_threshold_handshakes_per_second=1.5) as server:
        clients = [await BeaconClient.connect(server.addresses[0], server.fingerprint) for _ in range(4)]
        retries = server.metrics.retries._value.get()
        assert 1 <= retries < 4  # the first handshakes were not under load, the later ones were
        for client in clients:
            await client.close()


async def test_host_without_ipv6_address_keeps_ipv4(start_beacon):
    # an IPv6 address this host does not have: binding fails like on a host without IPv6
    async with start_beacon(ipv6_enabled=True, ipv6_host="2001:db8::1", ipv6_port=0) as server:
        assert server.ipv6_port is None and len(server.addresses) == 1
        client = await BeaconClient.connect(server.addresses[0], server.fingerprint)
        await client.close()


@pytest.mark.alone  # times asserted
async def test_wait_connected_after_the_handshake_already_completed(beacon):
    """aioquic records a completed handshake only for a waiter already waiting; under uvloop the
    handshake can complete before the task that awaits wait_connected() runs, which then hung
    until its timeout (the BeaconClient's 5 s). EndpointProtocol records it in every case."""
    import ssl

    from aioquic.quic.configuration import QuicConfiguration

    from discretpeer.endpoint import Endpoint, EndpointProtocol

    endpoint = await Endpoint.open("127.0.0.1", 0)
    try:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=[wire.BEACON_ALPN], verify_mode=ssl.CERT_NONE)
        protocol = endpoint.connect(beacon.addresses[0], configuration, EndpointProtocol)
        deadline = time.monotonic() + 5
        while not protocol._quic._handshake_complete:  # nobody waits while the handshake runs
            assert time.monotonic() < deadline, "handshake did not complete"
            await asyncio.sleep(0.005)
        started = time.monotonic()
        await asyncio.wait_for(protocol.wait_connected(), 2.0)
        assert time.monotonic() - started < 0.1
    finally:
        endpoint.close()
