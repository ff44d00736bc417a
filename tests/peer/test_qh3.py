"""Peer connections on qh3 (the default, Tuning(quic_stack="qh3")): the direct path, beacon still on aioquic."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import pytest

from discretpeer import Identity
from discretpeer.tuning import Tuning
from tests.conftest import beacon_entry
from tests.support.peers import connect_both, loopback_peer

QH3 = Tuning(quic_stack="qh3")
BULK = 20 * 1024 * 1024


async def test_two_qh3_peers_meet_verify_and_carry_20_mb(beacon, caplog):
    """Two peers with the default tuning: qh3 for the peer connection, aioquic for the beacon's."""
    ia, ib = Identity.generate(), Identity.generate()
    entry = [beacon_entry(beacon)]
    async with loopback_peer(ia, entry) as pa, loopback_peer(ib, entry) as pb:
        ca, cb = await connect_both(pa, pb)
        assert ca.peer_id == ib.peer_id and cb.peer_id == ia.peer_id  # the identity proof, both ways
        assert ca.path == cb.path == "direct"
        # the peer connections run on qh3, the beacon connections on aioquic
        for peer in (pa, pb):
            stacks = sorted(type(p.quic).__name__ for p in peer._endpoint.connections)
            assert stacks == ["AppPacedQuicConnection", "Qh3Connection"], stacks  # beacon, peer

        payload = os.urandom(BULK)

        async def send() -> None:
            _, writer = await ca.open_stream()
            for offset in range(0, BULK, 256 * 1024):
                writer.write(payload[offset : offset + 256 * 1024])
                await writer.drain()
            writer.write_eof()

        async def receive() -> bytes:
            reader, _ = await cb.accept_stream()
            return await reader.read()

        started = asyncio.get_running_loop().time()
        _, received = await asyncio.wait_for(asyncio.gather(send(), receive()), 60)
        elapsed = asyncio.get_running_loop().time() - started
        print(f"\nqh3 peers: {BULK / elapsed / 1e6:.1f} MB/s, {pa._endpoint.datagrams_sent} datagrams from the sender")
        assert len(received) == BULK
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        # no path-MTU probing on qh3: the size every route carries, from the first packet to the last
        assert ca.rtt is not None and ca.datagram_size == 1350 == cb.datagram_size
        if pb._endpoint.gro:  # the kernel's coalesced reads go into qh3's core whole
            assert pb._endpoint.coalesced_reads > 0

        await ca.aclose()
        await asyncio.wait_for(cb.wait_closed(), 5)
        assert cb.closed and cb.close_reason == "closed by application"
        # an ordinary close is no warning (qh3 logs each one as such: discretpeer._qh3 filters it)
        assert not [r for r in caplog.records if r.name == "quic" and r.levelno >= logging.WARNING], caplog.records


async def test_a_datagram_size_the_user_sets_is_used_from_the_first_packet_direct_and_relayed(beacon):
    """``Peer(max_datagram_size=1472)`` on qh3: 1472-byte datagrams from the first packet on the
    direct path and through a relay (in 1481-byte relay frames: loopback's route to the beacon
    takes them; a route that does not lowers the size, tests/unit/test_qh3.py); data flows either way."""
    ia, ib = Identity.generate(), Identity.generate()
    entry = [beacon_entry(beacon)]
    async with (
        loopback_peer(ia, entry, max_datagram_size=1472) as pa,
        loopback_peer(ib, entry, max_datagram_size=1472) as pb,
    ):
        ca, cb = await connect_both(pa, pb)
        assert ca.path == "direct" and (ca.datagram_size, cb.datagram_size) == (1472, 1472)
        await _send_and_check(ca, cb, 2 * 1024 * 1024)
    async with (
        loopback_peer(ia, entry, max_datagram_size=1472, direct=False) as pa,
        loopback_peer(ib, entry, max_datagram_size=1472, direct=False) as pb,
    ):
        ca, cb = await connect_both(pa, pb, meeting="relayed at 1472")
        assert ca.path == "relay"
        assert (ca.datagram_size, cb.datagram_size) == (1472, 1472)
        await _send_and_check(ca, cb, 256 * 1024)  # the beacon's default relay quota: 1 MB/s per peer


async def test_relay_frames_read_together_go_into_the_connection_together(make_beacon):
    """The beacon forwards a run of relay frames in one send; the receiving peer reads them as
    one GRO read and hands their payloads to the connection at once (Endpoint.relay_runs), not
    frame by frame; the data arrives whole and in order."""
    async with make_beacon(relay_rate_bytes_per_second=100_000_000, relay_burst_bytes=20_000_000) as beacon:
        ia, ib = Identity.generate(), Identity.generate()
        entry = [beacon_entry(beacon)]
        async with (
            loopback_peer(ia, entry, direct=False) as pa,
            loopback_peer(ib, entry, direct=False) as pb,
        ):
            ca, cb = await connect_both(pa, pb, meeting="relay runs")
            assert ca.path == "relay"
            await _send_and_check(ca, cb, 4 * 1024 * 1024)
            print(f"\n{pb._endpoint.relay_runs} relay runs, {pb._endpoint.datagrams_received} datagrams received")
            if pb._endpoint.gro:  # measured: ~90 runs for ~3,300 datagrams
                assert pb._endpoint.relay_runs > 0


async def _send_and_check(ca, cb, size: int) -> None:
    payload = os.urandom(size)
    _, writer = await ca.open_stream()
    writer.write(payload)
    writer.write_eof()
    reader, _ = await cb.accept_stream()
    assert await asyncio.wait_for(reader.read(), 20) == payload


def test_unknown_stack_is_refused():
    with pytest.raises(ValueError, match="quic_stack"):
        loopback_peer(Identity.generate(), [], tuning=Tuning(quic_stack="quiche"))


async def test_readers_of_many_streams_are_bounded_together_and_all_resume(beacon):
    """Eight streams of 3 MB, nobody reading: each reader may hold up to 2 MiB, all of them
    together at most half the connection window (8 MiB), not 16; then every stream is read
    to its end (the hold is released by reads, whichever stream they are on)."""
    ia, ib = Identity.generate(), Identity.generate()
    entry = [beacon_entry(beacon)]
    streams, size = 8, 3 * 1024 * 1024
    async with loopback_peer(ia, entry, tuning=QH3) as pa, loopback_peer(ib, entry, tuning=QH3) as pb:
        ca, cb = await connect_both(pa, pb)
        payloads = [os.urandom(size) for _ in range(streams)]
        for payload in payloads:
            _, writer = await ca.open_stream()
            writer.write(payload)
            writer.write_eof()
        readers = [(await asyncio.wait_for(cb.accept_stream(), 5))[0] for _ in range(streams)]
        await asyncio.sleep(1.5)  # nobody reads meanwhile
        held = sum(len(reader._buffer) for reader in readers)
        print(f"\nqh3, {streams} unread streams: {held / 1e6:.1f} MB held by their readers")
        assert held <= 10 * 1024 * 1024  # 8 MiB, plus what one datagram batch brought
        received = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader in readers)), 30)
        assert sorted(hashlib.sha256(r).digest() for r in received) == sorted(
            hashlib.sha256(p).digest() for p in payloads
        )
