"""Real beacon + real peers on loopback: meet, verify, exchange data; failures are reported."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certs import create_bundle
from discretpeer import ConnectError, Identity, Peer
from discretpeer.connection import READER_LIMIT
from discretpeer.tuning import DEFAULT_TUNING, STREAM_WINDOW, Tuning
from tests.conftest import beacon_entry, crowded_beacon, running_beacon
from tests.support.peers import carried, connect_both, loopback_peer

HERE = Path(__file__).parent


async def test_two_peers_meet_verify_and_talk_on_several_streams(beacon):
    ia, ib = Identity.generate(), Identity.generate()
    async with loopback_peer(ia, [beacon_entry(beacon)]) as pa, loopback_peer(ib, [beacon_entry(beacon)]) as pb:
        started = time.monotonic()
        ca, cb = await connect_both(pa, pb)
        print(
            f"\nloopback: connect() returned after {1000 * (time.monotonic() - started):.1f} ms; "
            f"introduction -> verified {1000 * ca.time_to_connect:.1f} ms"
        )
        assert ca.peer_id == ib.peer_id and cb.peer_id == ia.peer_id
        assert ca.path == cb.path == "direct"
        assert ca.dialer != cb.dialer  # exactly one side dialed
        assert pa.stats.verified == pb.stats.verified == 1

        async def exchange(index: int) -> None:
            payload = os.urandom(50_000 + index)
            r, w = await ca.open_stream()
            w.write(payload)
            await w.drain()
            w.write_eof()
            echoed = await r.read()
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload[::-1]).digest()

        async def serve(count: int) -> None:
            for _ in range(count):
                r, w = await cb.accept_stream()
                data = await r.read()
                w.write(data[::-1])
                w.write_eof()

        await asyncio.gather(serve(5), *(exchange(i) for i in range(5)))
        # and the other way round
        r, w = await cb.open_stream()
        w.write(b"from b")
        w.write_eof()
        r2, w2 = await ca.accept_stream()
        assert await r2.read() == b"from b"
        w2.write(b"ack")
        w2.write_eof()
        assert await r.read() == b"ack"


async def test_peer_in_another_process(beacon):
    ia = Identity.generate()
    meeting = "cross-process meeting"
    entry = beacon_entry(beacon)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "echo_peer.py"),
        entry["hostname"],
        entry["cert_hash"],
        meeting,
        ia.peer_id,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=str(HERE.parent.parent),
    )
    try:
        other_id = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        async with loopback_peer(ia, [entry]) as peer:
            conn = await peer.connect(meeting, expect=other_id, timeout=10)
            assert conn.peer_id == other_id
            for size in (1, 1000, 300_000):
                r, w = await conn.open_stream()
                payload = os.urandom(size)
                w.write(payload)
                w.write_eof()
                assert await asyncio.wait_for(r.read(), 10) == payload
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_one_beacon_down_the_other_works(beacon):
    dead = {"hostname": f"127.0.0.1:{_unused_udp_port()}", "cert_hash": create_bundle().fingerprint}
    beacons = [dead, beacon_entry(beacon)]
    async with loopback_peer(Identity.generate(), beacons) as pa, loopback_peer(Identity.generate(), beacons) as pb:
        ca, cb = await connect_both(pa, pb)
        assert ca.peer_id == pb.peer_id
        states = {status.beacon: status.state for status in pa.beacon_status}
        assert states[dead["hostname"]] != "connected" and states[beacon_entry(beacon)["hostname"]] == "connected"


async def test_wrong_beacon_hash_is_refused_and_reported(beacon):
    wrong = {"hostname": f"127.0.0.1:{beacon.port}", "cert_hash": create_bundle().fingerprint}
    async with loopback_peer(Identity.generate(), [wrong]) as peer:
        with pytest.raises(ConnectError) as info:
            await peer.connect("anything", expect=None, timeout=1.5)
        status = peer.beacon_status[0]
        assert status.state != "connected" and status.pin_mismatches >= 1
        assert "pinned" in status.last_error
        assert "beacons reached 0/1" in str(info.value) and "pinned" in str(info.value)
    assert True  # the beacon itself is unharmed:
    async with loopback_peer(Identity.generate(), [beacon_entry(beacon)]) as peer:
        assert await peer.wait_beacons(5) == 1


async def test_peer_expecting_someone_else_refuses(beacon):
    ia, ib, ic = Identity.generate(), Identity.generate(), Identity.generate()
    async with loopback_peer(ia, [beacon_entry(beacon)]) as pa, loopback_peer(ib, [beacon_entry(beacon)]) as pb:
        results = await asyncio.gather(
            pa.connect("meeting", expect=ic.peer_id, timeout=3),  # A waits for C, not B
            pb.connect("meeting", expect=ia.peer_id, timeout=3),
            return_exceptions=True,
        )
        # neither side may end up with a connection: A refuses B, so B must not count it as met
        assert all(isinstance(result, ConnectError) for result in results), results
        assert not pa.connections and not pb.connections
        text = " ".join(str(result) for result in results)
        assert "not expected" in text or "not the expected peer" in text or "refused" in text
        assert pa.stats.auth_failures + pb.stats.auth_failures >= 1
        assert pa.stats.verified == pb.stats.verified == 0


async def test_impostor_with_the_right_meeting_but_wrong_key_fails(beacon):
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    async with loopback_peer(alice, [beacon_entry(beacon)]) as pa, loopback_peer(mallory, [beacon_entry(beacon)]) as pm:
        # Mallory knows the meeting secret and claims nothing: she simply is not Bob.
        results = await asyncio.gather(
            pa.connect("alice and bob", expect=bob.peer_id, timeout=3),
            pm.connect("alice and bob", expect=None, timeout=3),
            return_exceptions=True,
        )
        assert isinstance(results[0], ConnectError)
        assert isinstance(results[1], ConnectError)
        assert pa.stats.verified == 0 and not pa.connections


async def test_beacon_restart_while_peers_wait(tmp_path):
    bundle = create_bundle()
    async with running_beacon(bundle) as first:
        port = first.port
        entry = beacon_entry(first)
    # the beacon is down now; peers start and wait
    async with loopback_peer(Identity.generate(), [entry]) as pa, loopback_peer(Identity.generate(), [entry]) as pb:
        meeting = asyncio.ensure_future(connect_both(pa, pb, timeout=30))
        await asyncio.sleep(1.5)
        assert not meeting.done()
        async with running_beacon(bundle, port=port):
            started = time.monotonic()
            ca, cb = await asyncio.wait_for(meeting, 30)
            print(f"\nmet {time.monotonic() - started:.2f} s after the beacon came back")
            assert ca.peer_id == pb.peer_id
            assert pa.beacon_status[0].connects >= 1 and pb.beacon_status[0].connects >= 1


async def test_many_meetings_and_connections_at_once(beacon):
    hub = Identity.generate()
    others = [Identity.generate() for _ in range(4)]
    async with loopback_peer(hub, [beacon_entry(beacon)]) as ph:
        peers = [loopback_peer(identity, [beacon_entry(beacon)]) for identity in others]
        for peer in peers:
            await peer.start()
        try:
            await ph.listen_for_peers([identity.peer_id for identity in others])
            connections = await asyncio.gather(*(peer.connect_to_peer(hub.peer_id, timeout=10) for peer in peers))
            assert {conn.peer_id for conn in connections} == {hub.peer_id}
            accepted = []
            async for conn in ph.incoming():
                accepted.append(conn.peer_id)
                if len(accepted) == len(others):
                    break
            assert sorted(accepted) == sorted(identity.peer_id for identity in others)
        finally:
            for peer in peers:
                await peer.close()
    # nothing left behind: every task of the closed peers is gone
    await asyncio.sleep(0.1)
    leftovers = [
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not t.done()
        and t.get_name() in ("punch loop", "maintenance", "dial", "accept")
    ]
    assert not leftovers


async def test_relay_only_peer_connects_through_the_beacon(beacon):
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [beacon_entry(beacon)], direct=False) as pa,
        loopback_peer(ib, [beacon_entry(beacon)]) as pb,
    ):
        ca, cb = await connect_both(pa, pb)
        assert ca.path == cb.path == "relay"
        assert ca.remote_address == ("127.0.0.1", beacon.port)
        payload = os.urandom(200_000)
        assert await carried(ca, cb, payload) == payload
        assert beacon.relay.sessions if hasattr(beacon.relay, "sessions") else True
        assert pa.stats.relay_grants >= 1 and pb.stats.relay_grants >= 1


async def test_stream_reset_reaches_the_other_side_and_streams_are_freed(beacon):
    ia, ib = Identity.generate(), Identity.generate()
    async with loopback_peer(ia, [beacon_entry(beacon)]) as pa, loopback_peer(ib, [beacon_entry(beacon)]) as pb:
        ca, cb = await connect_both(pa, pb)
        r, w = await ca.open_stream()
        w.write(b"partial")
        await w.drain()
        r2, w2 = await cb.accept_stream()
        assert await r2.readexactly(7) == b"partial"
        w.transport.abort()  # like a TCP reset
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r2.read(), 5)
        # finished streams do not accumulate
        for _ in range(20):
            r, w = await ca.open_stream()
            w.write(b"x")
            w.write_eof()
            r2, w2 = await cb.accept_stream()
            assert await r2.read() == b"x"
            w2.write_eof()
            assert await r.read() == b""
        assert len(cb._protocol._stream_readers) <= 2 and len(ca._protocol._stream_readers) <= 22


async def test_relay_quota_ends_the_session_and_the_app_is_told(make_beacon):
    async with make_beacon(relay_max_bytes=200_000) as beacon:
        ia, ib = Identity.generate(), Identity.generate()
        async with (
            loopback_peer(ia, [beacon_entry(beacon)], direct=False) as pa,
            loopback_peer(ib, [beacon_entry(beacon)], direct=False) as pb,
        ):
            started = time.monotonic()
            ca, cb = await connect_both(pa, pb)
            print(f"\nrelay-only peers connected in {1000 * (time.monotonic() - started):.0f} ms")
            assert ca.path == "relay"
            r, w = await ca.open_stream()
            w.write(os.urandom(1_000_000))  # more than the session may carry
            r2, _ = await cb.accept_stream()
            received = 0
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                while True:
                    chunk = await asyncio.wait_for(r2.read(65536), 10)
                    if not chunk:
                        raise ConnectionError("stream ended")
                    received += len(chunk)
            await asyncio.wait_for(cb.wait_closed(), 10)
            assert received < 1_000_000
            assert "RELAY_BYTES_EXCEEDED" in (cb.close_reason or "")
            assert pb.stats.relay_ends >= 1


@pytest.mark.parametrize(
    ("tuning", "buffered_cap", "writer_cap"),
    [
        # aioquic hands a stream's data to its reader up to the stream window (8 MiB)
        (Tuning(quic_stack="aioquic"), STREAM_WINDOW + 1024 * 1024, 12 * 1024 * 1024),
        # qh3: its core grants credit as events are taken, so Qh3Connection takes none while the
        # reader holds more than twice its limit; the rest waits in the core (one window)
        (DEFAULT_TUNING, 2 * READER_LIMIT + 1024 * 1024, 14 * 1024 * 1024),
        # windows for a long fat path (48 MiB per stream): a stalled reader holds up to that much
        # (README: "up to the stream window of memory per stalled stream"), and no more; the
        # writer stops at the window + the reader's share + its own queue, which follows the bytes
        # that were in flight when it stopped (measured 54.2-61.5 MiB)
        (DEFAULT_TUNING.for_path(250e6, 0.1), 2 * READER_LIMIT + 1024 * 1024, 72 * 1024 * 1024),
    ],
    ids=["aioquic", "qh3", "qh3-for-path"],
)
async def test_a_slow_reader_bounds_what_is_buffered_and_slows_the_writer(beacon, tuning, buffered_cap, writer_cap):
    ia, ib = Identity.generate(), Identity.generate()
    entry = [beacon_entry(beacon)]
    async with loopback_peer(ia, entry, tuning=tuning) as pa, loopback_peer(ib, entry, tuning=tuning) as pb:
        ca, cb = await connect_both(pa, pb)
        r, w = await ca.open_stream()
        written = 0

        async def writer() -> None:
            nonlocal written
            chunk = b"z" * 65536
            while True:
                w.write(chunk)
                written += len(chunk)
                await w.drain()

        task = asyncio.ensure_future(writer())
        r2, _ = await cb.accept_stream()
        await asyncio.sleep(1.5)  # the reader reads nothing meanwhile
        buffered = len(r2._buffer)
        stalled_at = written
        await asyncio.sleep(0.5)
        print(
            f"\nslow reader: {buffered / 1e6:.1f} MB buffered at the reader, writer stopped at {written / 1e6:.1f} MB"
        )
        assert buffered <= buffered_cap
        assert written == stalled_at and written <= writer_cap  # the writer waits in drain()
        # reading resumes the flow
        received = 0
        while received < 20 * 1024 * 1024:
            received += len(await asyncio.wait_for(r2.read(1 << 20), 5))
        task.cancel()
        # the writer went on past where it stalled: everything read was written after the stall
        assert written >= received >= 20 * 1024 * 1024 and written > stalled_at


async def _transfer(sender, receiver, total: int) -> float:
    """Send ``total`` bytes on one stream; returns seconds until the receiver has them all."""
    chunk = os.urandom(64 * 1024)
    writer_side = asyncio.ensure_future(sender.open_stream())
    reader_side = asyncio.ensure_future(receiver.accept_stream())
    _, w = await writer_side
    started = time.monotonic()
    w.write(chunk)  # the peer learns of a stream with its first bytes
    r, _ = await reader_side
    sent, got = len(chunk), 0

    async def read_all() -> None:
        nonlocal got
        while got < total:
            data = await r.read(1 << 20)
            assert data, f"stream ended after {got} of {total} bytes"
            got += len(data)

    reading = asyncio.ensure_future(read_all())
    while sent < total:
        w.write(chunk)
        sent += len(chunk)
        await w.drain()
    await asyncio.wait_for(reading, 30)
    return time.monotonic() - started


ON_AIOQUIC = Tuning(quic_stack="aioquic")  # the path-MTU probing is aioquic's (qh3: tests/peer/test_qh3.py)


async def test_larger_datagrams_once_the_path_confirms_them(beacon):
    """On aioquic, on loopback (MTU 65536) both sides probe and move to 16,000-byte datagrams after the
    connection is verified, and data flows at that size; through the relay too (in relay frames),
    and a beacon that forwards no such frames leaves them at the base size."""
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [beacon_entry(beacon)], tuning=ON_AIOQUIC) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], tuning=ON_AIOQUIC) as pb,
    ):
        ca, cb = await connect_both(pa, pb)
        assert ca.path == "direct"
        deadline = time.monotonic() + 3
        while (ca.datagram_size, cb.datagram_size) != (16000, 16000):
            assert time.monotonic() < deadline, f"datagram sizes stayed {ca.datagram_size}/{cb.datagram_size}"
            await asyncio.sleep(0.02)
        seconds = await _transfer(ca, cb, 8 * 1024 * 1024)
        print(f"\n8 MiB on one stream with {ca.datagram_size}-byte datagrams: {8 / 1.048576 / seconds:.1f} MB/s")
    async with (
        loopback_peer(ia, [beacon_entry(beacon)], direct=False, tuning=ON_AIOQUIC) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], direct=False, tuning=ON_AIOQUIC) as pb,
    ):
        ca, cb = await connect_both(pa, pb, meeting="relayed")
        assert ca.path == "relay"
        deadline = time.monotonic() + 3
        while (ca.datagram_size, cb.datagram_size) != (16000, 16000):
            assert time.monotonic() < deadline, f"relayed datagram sizes stayed {ca.datagram_size}/{cb.datagram_size}"
            await asyncio.sleep(0.02)
        await _transfer(ca, cb, 512 * 1024)  # the beacon's default relay quota: 1 MB/s per peer


async def test_max_datagram_size_caps_what_path_mtu_probing_settles_on(beacon):
    """``Peer(max_datagram_size=1472)``: loopback carries 16,000-byte datagrams, but both sides
    settle on 1472 and move data at that size; a bad value is refused by name."""
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [beacon_entry(beacon)], max_datagram_size=1472, tuning=ON_AIOQUIC) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], max_datagram_size=1472, tuning=ON_AIOQUIC) as pb,
    ):
        ca, cb = await connect_both(pa, pb)
        deadline = time.monotonic() + 3
        while ca._protocol._quic.searching or cb._protocol._quic.searching or ca.datagram_size != 1472:
            assert time.monotonic() < deadline, f"datagram sizes stayed {ca.datagram_size}/{cb.datagram_size}"
            await asyncio.sleep(0.02)
        await _transfer(ca, cb, 1024 * 1024)
        assert (ca.datagram_size, cb.datagram_size) == (1472, 1472)
    with pytest.raises(ValueError, match="max_datagram_size"):
        Peer(ia, [], max_datagram_size=100_000)


async def test_relay_that_drops_large_frames_keeps_the_base_size(beacon, monkeypatch):
    """A beacon that forwards at most 1500-byte payloads (an older one, or a small MTU on its
    far leg): the probes die there, the connection stays at what gets through and works."""
    import beacon.relay as relay_module

    monkeypatch.setattr(relay_module, "MAX_RELAY_PAYLOAD", 1500)
    ia, ib = Identity.generate(), Identity.generate()
    async with (
        loopback_peer(ia, [beacon_entry(beacon)], direct=False, tuning=ON_AIOQUIC) as pa,
        loopback_peer(ib, [beacon_entry(beacon)], direct=False, tuning=ON_AIOQUIC) as pb,
    ):
        ca, cb = await connect_both(pa, pb, meeting="old relay")
        deadline = time.monotonic() + 5
        while ca._protocol._quic.searching or cb._protocol._quic.searching:
            assert time.monotonic() < deadline, "the datagram size search did not end"
            await asyncio.sleep(0.05)
        assert ca.datagram_size == cb.datagram_size == 1472 - 9  # the Ethernet size fits in 1500
        assert ca._protocol._quic.size_probes_lost >= 3  # 16,000 was tried and lost
        await _transfer(ca, cb, 1024 * 1024)


async def test_relay_with_two_beacons_whichever_session_each_peer_picked(beacon, make_beacon):
    """Both beacons introduce the pair and both grant a relay session; each peer sends through
    the first grant it got, which need not be the other's. Frames of every session granted for
    the pair are accepted, so the connection works whatever the picks (tried several times, with
    the beacons listed in opposite orders)."""
    async with make_beacon() as second:
        entries = [beacon_entry(beacon), beacon_entry(second)]
        for attempt in range(4):
            ia, ib = Identity.generate(), Identity.generate()
            async with (
                loopback_peer(ia, entries, direct=False) as pa,
                loopback_peer(ib, entries[::-1], direct=False) as pb,
            ):
                ca, cb = await connect_both(pa, pb, meeting=f"two beacons {attempt}")
                assert ca.path == cb.path == "relay"
                await _transfer(ca, cb, 200_000)
                await _transfer(cb, ca, 200_000)
                assert pa.stats.relay_grants + pb.stats.relay_grants >= 2


async def test_relayed_connection_moves_to_the_other_beacon_when_its_beacon_stops(make_beacon):
    """Two beacons, relay only: the beacon carrying our relay session stops; the connection
    moves to the session the other beacon granted, and the same stream goes on."""
    async with make_beacon() as first, make_beacon() as second:
        servers = {first.port: first, second.port: second}
        entries = [beacon_entry(first), beacon_entry(second)]
        ia, ib = Identity.generate(), Identity.generate()
        async with loopback_peer(ia, entries, direct=False) as pa, loopback_peer(ib, entries, direct=False) as pb:
            ca, cb = await connect_both(pa, pb, meeting="failover")
            assert ca.path == cb.path == "relay"
            deadline = time.monotonic() + 5
            while not (pa._pairs and all(p.relay_aliases for p in pa._pairs.values())):
                assert time.monotonic() < deadline, "the second beacon's grant never came"
                await asyncio.sleep(0.02)
            ra, wa = await ca.open_stream()
            wa.write(b"before")
            rb, wb = await cb.accept_stream()
            assert await rb.readexactly(6) == b"before"
            used = ca.remote_address[1]  # the beacon pa sends through
            await servers[used].stop()
            await asyncio.wait_for(ca.path_changes.get(), 5)
            assert ca.remote_address[1] != used and ca.path == "relay"
            for n in range(20):
                wa.write(b"ping%02d" % n)
                assert await asyncio.wait_for(rb.readexactly(6), 5) == b"ping%02d" % n
                wb.write(b"pong%02d" % n)
                assert await asyncio.wait_for(ra.readexactly(6), 5) == b"pong%02d" % n
            assert not ca.closed and not cb.closed
            assert pa.stats.path_switches >= 1


async def test_token_refused_as_full_is_reported_in_connect_error():
    """Two listeners from two other addresses take both places of the meeting's tokens
    (max_peers_per_token = 2): a third peer's connect() fails and says that the beacon refused
    the token as full, instead of only timing out."""
    meeting = "a crowded meeting"
    async with crowded_beacon(meeting) as (_, entry, _holders), loopback_peer(Identity.generate(), entry) as late:
        with pytest.raises(ConnectError) as info:
            await late.connect(meeting, expect=None, timeout=1.5)
        text = str(info.value)
        assert "refused the meeting's token" in text and "full" in text, text
        assert info.value.report["refusals"] and "full" in info.value.report["refusals"][0]
        # the CLI's one-line explanation says so too (not "the beacon never introduced it")
        from discretpeer.cli.session import explain_connect_error

        line = explain_connect_error(info.value, "someone", late.peer_id, secret=True)
        assert "full" in line and "squatting" in line and "never introduced" not in line, line
        status = late.beacon_status[0]
        assert status.tokens_full == 2 and "full" in status.full_refusal


async def test_token_refused_as_full_is_announced_again_when_a_place_frees(monkeypatch):
    from discretpeer import beacon_client

    monkeypatch.setattr(beacon_client, "TOKEN_FULL_RETRY", 0.3)
    meeting = "a crowded meeting"
    async with crowded_beacon(meeting) as (_, entry, holders), loopback_peer(Identity.generate(), entry) as late:
        attempt = asyncio.ensure_future(late.connect(meeting, expect=holders[1].peer_id, timeout=8))
        for _ in range(100):
            if late.beacon_status[0].tokens_full:
                break
            await asyncio.sleep(0.02)
        assert late.beacon_status[0].tokens_full >= 1
        await holders[0].close()  # a place frees; the late peer's retry takes it
        connection = await attempt
        assert connection.peer_id == holders[1].peer_id


async def test_a_closing_peer_closes_connections_verified_while_it_closes(beacon):
    """close() waits (bounded) for its connections' data to be acknowledged; a peer that connects
    in that window (a ``forward`` reconnecting at once to an ``expose`` that is stopping) must have
    its connection closed too, not dropped silently (it would hear nothing until its path timeout,
    6 s, and take the dead connection for a live one until then)."""
    ia, ib, ic = Identity.generate(), Identity.generate(), Identity.generate()
    entry = beacon_entry(beacon)
    async with loopback_peer(ib, [entry]) as pb, loopback_peer(ic, [entry]) as pc:
        pa = await loopback_peer(ia, [entry]).start()
        try:
            await pa.listen_for_peers([ib.peer_id, ic.peer_id])
            incoming = pa.incoming()
            await pb.connect_to_peer(ia.peer_id, timeout=5)
            held = await asyncio.wait_for(anext(incoming), 5)
            _, writer = await held.open_stream()
            writer.write(b"x" * 4_000_000)  # b never reads it: close() waits up to 2 s for its ack
            closing = asyncio.ensure_future(pa.close())
            await asyncio.sleep(0.1)
            assert not closing.done()
            try:
                conn = await pc.connect_to_peer(ia.peer_id, timeout=3)
            except ConnectError:
                return  # never verified: nothing to close (also fine)
            started = time.monotonic()
            while not conn.closed and time.monotonic() - started < 3:
                await asyncio.sleep(0.02)
            assert conn.closed, "the closing peer dropped a verified connection without closing it"
            await closing
        finally:
            await pa.close()
