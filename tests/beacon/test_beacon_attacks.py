"""Issue 12 (QUIC level): each attack performed for real against an in-process beacon on loopback.

Memory from out-of-order STREAM data, STOP_SENDING / RESET_STREAM on the control stream, junk
Initials spending a victim IP's slots, Version Negotiation and CONNECTION_CLOSE amplification.
Every test also checks that the logs hold no traceback and that a legitimate pair still meets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header
from attack_support import attacked_beacon, hostile, rss_bytes, watched_beacon
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon import quic_tuning
from discretpeer.proto import wire

KB = 1024


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# --- 1. memory ----------------------------------------------------------------------------------


async def test_out_of_order_stream_data_holds_bounded_memory(tmp_path):
    """One-byte STREAM frames at the highest offset the beacon grants, on the control stream,
    round after round: aioquic alone doubled the credit each round (+256 MB in 13 rounds)."""
    async with watched_beacon(tmp_path) as beacon:
        attackers = [await beacon.hostile() for _ in range(8)]
        rss_before = rss_bytes()
        highest = 0
        try:
            # stop early if the beacon is losing (before the fix): no need to eat the machine
            reached = await asyncio.gather(
                *(
                    a.out_of_order(streams=(0,), rounds=14, stop=lambda: beacon.buffered_bytes() > 64 * 2**20)
                    for a in attackers
                )
            )
            highest = max(reached)
            buffered = beacon.buffered_bytes()
            grown = rss_bytes() - rss_before
        finally:
            for attacker in attackers:
                await attacker.close()
        assert highest <= 64 * KB, f"the beacon granted credit up to offset {highest}"
        assert buffered <= 8 * 64 * KB, f"{buffered} bytes buffered by 8 hostile connections"
        assert grown < 8 * 2**20, f"RSS grew by {grown} bytes"
        await beacon.pair_meets()
        beacon.assert_clean()


@pytest.mark.parametrize("stream_id", [4, 8, 2, 3])
async def test_streams_other_than_control_are_refused(tmp_path, stream_id):
    """Any stream besides 0 (bidi 4/8, client uni 2, server uni 3) ends the connection with a
    transport error; the beacon never buffers data on it."""
    async with attacked_beacon(tmp_path) as (beacon, attacker):
        attacker.send_frames(hostile.stream_frame(stream_id, 12 * KB, b"x"))
        await wait_until(lambda: attacker.closed)
        assert beacon.buffered_bytes() < 4 * KB
        code = attacker.client.protocol.terminated.error_code
        # 0x4 STREAM_LIMIT_ERROR (the beacon allows one stream); 0x5 STREAM_STATE_ERROR (3 is
        # a stream only the beacon could open)
        assert code == (0x5 if stream_id == 3 else 0x4), attacker.client.protocol.terminated


async def test_many_gaps_on_the_control_stream_end_the_connection(tmp_path):
    async with attacked_beacon(tmp_path) as (beacon, attacker):
        attacker.send_frames(*(hostile.stream_frame(0, 1000 + 2 * i, b"x") for i in range(400)))
        await wait_until(lambda: attacker.closed)


async def test_out_of_order_crypto_data_is_bounded(tmp_path):
    """1-RTT CRYPTO frames far ahead: aioquic would buffer up to 512 KiB per epoch."""
    async with attacked_beacon(tmp_path) as (beacon, attacker):
        attacker.send_frames((0x06, hostile.varint(500 * KB) + hostile.varint(1) + b"x"))
        await wait_until(lambda: attacker.closed)
        assert beacon.buffered_bytes() < 64 * KB


# --- 2. the control stream given up ------------------------------------------------------------


@pytest.mark.parametrize("before_hello", [False, True])
async def test_stop_sending_on_control_stream_closes_once(tmp_path, before_hello):
    """STOP_SENDING on stream 0, then a storm of Pings: aioquic raises RuntimeError on every
    write; the beacon must close the connection once and log little (it logged a traceback
    per Ping and never closed)."""
    async with watched_beacon(tmp_path) as beacon:
        attacker = await beacon.hostile(hello=not before_hello)
        try:
            lines_before = len(beacon.log_lines())
            attacker.send_frames(hostile.stop_sending(0))
            if before_hello:
                attacker.client.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=attacker.client.instance))
            for nonce in range(300):
                if attacker.closed:
                    break
                attacker.client.send(wire.Ping(nonce=nonce))
                await asyncio.sleep(0.002)
            await wait_until(lambda: attacker.closed)
        finally:
            await attacker.close()
        await asyncio.sleep(0.1)
        lines = beacon.log_lines()[lines_before:]
        assert len(lines) <= 4, lines
        assert beacon.server.connection_count == 0
        assert beacon.server.metrics.dropped_connections.labels("stop_sending")._value.get() == 1
        await beacon.pair_meets()
        beacon.assert_clean()


async def test_reset_of_control_stream_closes_the_connection(tmp_path):
    """RESET_STREAM on stream 0 (with the right final size): the client can say nothing more,
    so the beacon closes at once instead of holding the connection until the idle timeout."""
    async with watched_beacon(tmp_path) as beacon:
        attacker = await beacon.hostile()
        try:
            final_size = attacker.quic._streams[0].sender._buffer_stop
            attacker.send_frames(hostile.reset_stream(0, 7, final_size))
            await wait_until(lambda: attacker.closed, timeout=2.0)
        finally:
            await attacker.close()
        assert beacon.server.metrics.dropped_connections.labels("stream_reset")._value.get() == 1
        await beacon.pair_meets()
        beacon.assert_clean()


# --- 6. junk Initials ------------------------------------------------------------------------------


@pytest.mark.parametrize("retry", ["never", "always", "auto"])
async def test_junk_initials_do_not_use_up_the_ip(tmp_path, retry):
    """Junk Initials at 30/s from 127.0.0.1 while legitimate clients connect from 127.0.0.1:
    every legitimate attempt succeeds (they used to fill the per-IP connection slots for 10 s
    and drain the per-IP handshake budget)."""
    async with watched_beacon(
        tmp_path,
        retry=retry,
        max_connections_per_ip=6,
        handshakes_per_second_per_ip=4.0,
        handshake_burst_per_ip=4,
        retry_threshold_handshakes_per_second=1000.0,
    ) as beacon:
        raw = hostile.RawSocket()
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                raw.send(hostile.junk_initial(), beacon.address)
                raw.drain()
                await asyncio.sleep(1 / 30)

        flooding = asyncio.create_task(flood())
        try:
            await asyncio.sleep(0.5)  # the flood is on before the first legitimate attempt
            outcomes = []
            for _ in range(4):
                try:
                    client = await beacon.connect(timeout=2.0)
                except (TimeoutError, ConnectionError) as exc:
                    outcomes.append(repr(exc))
                else:
                    outcomes.append("ok")
                    await client.close()
                await asyncio.sleep(0.25)
        finally:
            stop.set()
            await flooding
            raw.close()
        assert outcomes == ["ok"] * 4, outcomes
        rendered = beacon.server.metrics.render().decode()
        dropped = [
            line
            for line in rendered.splitlines()
            if line.startswith('beacon_handshake_dropped_datagrams_total{reason="undecryptable"}')
        ]
        assert dropped and float(dropped[0].split()[-1]) >= 20, dropped
        await beacon.pair_meets()
        beacon.assert_clean()


# --- 9. amplification ----------------------------------------------------------------------------


async def test_unknown_version_under_1200_bytes_is_not_answered(tmp_path):
    async with watched_beacon(tmp_path) as beacon:
        raw = hostile.RawSocket()
        try:
            for size in (40, 100, 600, 1199):
                raw.send(hostile.unknown_version(size), beacon.address)
            await raw.collect(0.3)
            assert raw.received == 0, f"{raw.received} bytes answered to {raw.sent} bytes"
            raw.send(hostile.unknown_version(1200), beacon.address)  # a real client's first datagram
            await raw.collect(0.3)
            assert raw.datagrams_received == 1 and raw.received <= 1200
        finally:
            raw.close()
        beacon.assert_clean()


async def test_abandoned_handshake_stays_within_3x(tmp_path):
    """A valid Initial from an address that never answers (a spoofed victim): the beacon's
    flight, its retransmissions and the hello-timeout CONNECTION_CLOSE stay within 3x."""
    async with watched_beacon(tmp_path, hello_timeout_seconds=2.5) as beacon:
        raws = [hostile.RawSocket() for _ in range(3)]
        try:
            for raw in raws:
                raw.send(hostile.client_initial(beacon.address), beacon.address)
            await asyncio.gather(*(raw.collect(4.0) for raw in raws))
            for raw in raws:
                assert raw.received > 0
                assert raw.received <= 3 * raw.sent, f"{raw.received} bytes sent for {raw.sent} received"
        finally:
            for raw in raws:
                raw.close()
        assert beacon.server.connection_count == 0
        beacon.assert_clean()


async def test_log_is_json_without_traceback_after_attacks(tmp_path):
    """The log file itself stays parseable and calm across a mix of the attacks."""
    async with watched_beacon(tmp_path) as beacon:
        attacker = await beacon.hostile()
        attacker.send_frames(hostile.stop_sending(0), hostile.stream_frame(0, 9000, b"x"))
        await wait_until(lambda: attacker.closed)
        await attacker.close()
        await beacon.pair_meets()
        for line in beacon.log_lines():
            assert "exception" not in json.loads(line)
        beacon.assert_clean()


# --- the junk-Initial filter itself (a parser of network bytes: property tests) ------------------

_VALID_INITIAL = hostile.client_initial(("127.0.0.1", 4264))
_INITIAL_PACKET_LENGTH = pull_quic_header(Buffer(data=_VALID_INITIAL), host_cid_length=8).packet_length


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
def test_initial_filter_refuses_random_bytes(data):
    assert quic_tuning.initial_decrypts(data, 8) is False


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(_VALID_INITIAL) - 1), st.integers(1, 255))
def test_initial_filter_accepts_a_real_initial_and_refuses_any_change_to_it(index, flip):
    assert quic_tuning.initial_decrypts(_VALID_INITIAL, 8) is True
    changed = bytearray(_VALID_INITIAL)
    changed[index] ^= flip
    # every byte of the packet is authenticated (the header as associated data); what follows
    # the packet in the datagram (aioquic's padding) is not part of it
    if index < _INITIAL_PACKET_LENGTH:
        assert quic_tuning.initial_decrypts(bytes(changed), 8) is False


@settings(max_examples=50, deadline=None)
@given(st.integers(29, 1500))
def test_initial_filter_refuses_junk_initials(size):
    assert quic_tuning.initial_decrypts(hostile.junk_initial(size), 8) is False


async def test_handshake_queue_keeps_draining_after_a_handler_fails(tmp_path, monkeypatch):
    """Whatever escapes from one connection's handling (here: a fault injected into the
    beacon's own connection bookkeeping) is logged once, and the Initials queued behind it are
    still served at once (it used to stop the queue until the next long-header datagram)."""
    async with watched_beacon(tmp_path) as beacon:
        victim, bystander = hostile.RawSocket(), hostile.RawSocket()
        poisoned_port = victim.sock.getsockname()[1]
        original = beacon.server._connection_started

        def faulty(protocol, address):
            if address[1] == poisoned_port:
                raise RuntimeError("injected fault")
            return original(protocol, address)

        monkeypatch.setattr(beacon.server, "_connection_started", faulty)
        endpoint = beacon.server._endpoints[0]
        try:
            # both queued in the same loop iteration, the faulty one first
            endpoint.datagram_received(hostile.client_initial(beacon.address), victim.sock.getsockname())
            endpoint.datagram_received(hostile.client_initial(beacon.address), bystander.sock.getsockname())
            await bystander.collect(0.3)
            assert bystander.received > 0, "the Initial queued behind the failure was not served"
        finally:
            victim.close()
            bystander.close()
        assert not beacon.loop_errors, beacon.loop_errors
        errors = [line for line in beacon.log_lines() if "internal_error" in line]
        assert len(errors) == 1, errors
        monkeypatch.undo()
        await beacon.pair_meets()


async def test_hostile_connections_leave_no_transport_warnings(tmp_path, caplog):
    """aioquic logs a WARNING for every connection it closes on a transport error: one stderr
    line per attacking connection. The beacon's connections keep that below ERROR."""
    caplog.set_level(logging.DEBUG, logger="quic")
    caplog.set_level(logging.WARNING)
    async with watched_beacon(tmp_path) as beacon:
        for frames in (
            [hostile.stream_frame(4, 100, b"x")],
            [hostile.stream_frame(0, 5000 + 2 * i, b"x") for i in range(40)],
        ):
            attacker = await beacon.hostile()
            attacker.send_frames(*frames)
            await wait_until(lambda attacker=attacker: attacker.closed)
            await attacker.close()
        server_side = [r for r in caplog.records if r.name.startswith("quic") and r.levelno >= logging.WARNING]
        assert not server_side, [r.getMessage() for r in server_side]
        beacon.assert_clean()
