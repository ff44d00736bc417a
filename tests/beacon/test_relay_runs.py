"""Relay runs: datagrams that reach the beacon in one read (UDP GRO) leave in one send (UDP GSO).

The sans-I/O part (:meth:`beacon.relay.RelayTable.route_run`) takes a run only when routing it
datagram by datagram would forward every one of them to the same place; anything else is routed
one by one, with nothing counted or spent twice. Over real sockets: a run from a side arrives at
the other side whole and in order; what a stranger sends as a run (spoofed source, mixed
sessions, a cut-off last frame, more than the rate allows, garbage) is judged frame by frame as
before, with no traceback, and the pair still relays.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from test_beacon_relay import close_all, granted_pair

from beacon import BeaconServer, loopback_config
from beacon.relay import RelayQuota, RelayTable
from certs import create_bundle
from discretpeer.endpoint import UDP_SEGMENT
from discretpeer.proto.relay_frame import RELAY_HEADER_SIZE, build_relay_frame

A, B, C = ("198.51.100.1", 1111), ("198.51.100.2", 2222), ("198.51.100.3", 3333)
T1 = b"\x01" * 32


def inst(n: int) -> bytes:
    return bytes([n]) * 16


def relay(**quota) -> RelayTable:
    ids = (n.to_bytes(8, "big") for n in itertools.count(1))
    return RelayTable(RelayQuota(**quota), random=lambda size: next(ids))


def grant(r: RelayTable, now: float = 0.0, token: bytes = T1):
    r.request(1, inst(1), token, 2, inst(2), "via-a", A, now)
    session = r.request(2, inst(2), token, 1, inst(1), "via-b", B, now).session
    assert session is not None
    return session


def run_of(*frames: bytes) -> tuple[bytes, int]:
    return b"".join(frames), len(frames[0])


def state(r: RelayTable) -> tuple:
    sessions = tuple((s.bytes, s.datagrams) for s in r._sessions.values())
    return r.forwarded_bytes, r.forwarded_datagrams, dict(r.dropped), sessions, len(r.ended)


# --- the table ---------------------------------------------------------------------------------


def test_a_run_from_a_side_goes_whole_and_is_counted_per_datagram():
    r = relay()
    s = grant(r)
    frames = [build_relay_frame(s.session_id, bytes([i]) * 1200) for i in range(5)]
    data, segment = run_of(*frames, build_relay_frame(s.session_id, b"last"))
    assert r.route_run(data, segment, A, 0.0, "via-a") == ("via-b", B)
    assert r.route_run(data, segment, B, 0.0, "via-b") == ("via-a", A)
    assert (r.forwarded_datagrams, r.forwarded_bytes, r.forwarded_runs) == (12, 2 * len(data), 2)
    assert (s.datagrams, s.bytes) == (12, 2 * len(data))


def test_runs_the_table_refuses_touch_nothing():
    r = relay(rate_bytes_per_second=1000, burst_bytes=5000, max_bytes=100_000)
    s = grant(r)
    other = grant(r, token=b"\x02" * 32)  # a second session between the same two
    assert other.session_id != s.session_id
    good = build_relay_frame(s.session_id, b"x" * 991)  # 1000 bytes
    cases = {
        "stranger's source": (run_of(good, good), C, "via-a"),
        "a side's address through another socket": (run_of(good, good), A, "elsewhere"),
        "two sessions in one run": (run_of(good, build_relay_frame(other.session_id, b"y" * 991)), A, "via-a"),
        "unknown session": (run_of(*[build_relay_frame(b"\0" * 8, b"z" * 991)] * 2), A, "via-a"),
        "last one only a header": ((good + good[:RELAY_HEADER_SIZE], len(good)), A, "via-a"),
        "not relay frames": ((b"\x4f" * 2000, 1000), A, "via-a"),
        "one datagram": ((good, len(good)), A, "via-a"),
        "more than the bucket holds": (run_of(*[good] * 6), A, "via-a"),
    }
    for name, ((data, segment), source, via) in cases.items():
        before = state(r)
        assert r.route_run(data, segment, source, 0.0, via) is None, name
        assert state(r) == before, name
    # what the bucket allows still goes, one by one, exactly as before runs existed
    data, segment = run_of(*[good] * 6)
    assert [r.route(data[i : i + segment], A, 0.0, "via-a") for i in range(0, len(data), segment)] == [
        ("via-b", B)
    ] * 5 + [None]
    assert r.dropped["throttled"] == 1


def test_a_run_that_would_cross_the_byte_quota_ends_the_session_where_one_by_one_would():
    r = relay(max_bytes=2500)
    s = grant(r)
    frame = build_relay_frame(s.session_id, b"x" * 991)
    data, segment = run_of(frame, frame, frame)
    assert r.route_run(data, segment, A, 0.0, "via-a") is None
    assert r.session_count == 1 and not r.ended
    routed = [r.route(data[i : i + segment], A, 0.0, "via-a") for i in range(0, len(data), segment)]
    assert routed == [("via-b", B), ("via-b", B), None] and r.ended and r.session_count == 0


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 1400), min_size=1, max_size=20),
    tamper=st.lists(st.tuples(st.integers(0, 30_000), st.integers(0, 255)), max_size=3),
    source=st.sampled_from([A, B, C]),
    burst=st.integers(0, 40_000),
)
def test_a_run_goes_whole_only_when_each_datagram_would(sizes, tamper, source, burst):
    """Property: route_run forwards a run only when route() would forward every datagram of it
    to the same place, and then counts exactly what route() would have; otherwise it changes
    nothing. (Two tables with the same history: one routes the run, the other one by one.)"""
    tables = [relay(rate_bytes_per_second=1000, burst_bytes=burst) for _ in range(2)]
    sid = [grant(t).session_id for t in tables][0]
    segment = RELAY_HEADER_SIZE + sizes[0]
    data = bytearray(b"".join(build_relay_frame(sid, bytes([n % 251]) * sizes[0]) for n in range(len(sizes))))
    data += build_relay_frame(sid, b"e" * min(sizes[-1], sizes[0]))[: RELAY_HEADER_SIZE + 1 + len(sizes) % 3]
    for offset, value in tamper:
        if offset < len(data):
            data[offset] = value
    data = bytes(data)
    whole, single = tables
    via = {A: "via-a", B: "via-b", C: "via-a"}[source]
    target = whole.route_run(data, segment, source, 0.0, via)
    one_by_one = [single.route(data[i : i + segment], source, 0.0, via) for i in range(0, len(data), segment)]
    if target is None:
        assert state(whole)[:2] == (0, 0) and whole.forwarded_runs == 0
    else:
        assert one_by_one == [target] * len(one_by_one)
        assert state(whole) == state(single)


# --- over real sockets: a beacon in this process, two clients on loopback ------------------------


def gso_send(sock: socket.socket, data: bytes, segment: int, address) -> None:
    """Several datagrams in one send (UDP GSO): on loopback they reach a GRO reader as one read."""
    sock.sendmsg([data], [(socket.SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, "little"))], 0, address)


async def frames_at(peer, count: int) -> list[bytes]:
    return [(await peer.received())[0] for _ in range(count)]


def reads_runs(server) -> bool:
    return all(endpoint.gro for endpoint in server._endpoints)


async def test_a_run_crosses_the_beacon_in_one_read_and_one_send(start_beacon):
    async with start_beacon() as server:
        assert not any(endpoint.gro for endpoint in server._endpoints)  # nothing relayed: plain reads
        a, b, _, grant_a, _ = await granted_pair(server)
        assert reads_runs(server)  # from the first grant on
        beacon = server.addresses[0]
        frames = [build_relay_frame(grant_a.session_id, bytes([i]) * 1400) for i in range(20)]
        frames.append(build_relay_frame(grant_a.session_id, b"the last is shorter"))
        sends_before = a.client.endpoint.gso_sends
        a.client.endpoint.send_run(b"".join(frames), len(frames[0]), beacon)
        assert a.client.endpoint.gso_sends == sends_before + 1  # left A in one send
        assert await frames_at(b, len(frames)) == frames  # whole, in order
        assert server.relay.forwarded_runs == 1  # read at once, sent at once
        assert server.relay.forwarded_datagrams == len(frames)
        metrics = server.metrics.render().decode()
        assert "beacon_relay_runs_total 1.0" in metrics
        assert f"beacon_relay_datagrams_total {len(frames)}.0" in metrics
        # and back, B to A
        replies = [build_relay_frame(grant_a.session_id, bytes([i]) * 1000) for i in range(8)]
        b.client.endpoint.send_run(b"".join(replies), len(replies[0]), beacon)
        assert await frames_at(a, len(replies)) == replies
        assert server.relay.forwarded_runs == 2
        await close_all(a, b)
        deadline = asyncio.get_running_loop().time() + 5
        while server.relay.session_count or any(endpoint.gro for endpoint in server._endpoints):
            assert asyncio.get_running_loop().time() < deadline, "GRO reads still on with no session"
            await asyncio.sleep(0.1)


async def test_strangers_runs_are_judged_frame_by_frame(start_beacon):
    async with start_beacon(relay_rate_bytes_per_second=1000, relay_burst_bytes=30_000) as server:
        a, b, _, grant_a, _ = await granted_pair(server)
        sid = grant_a.session_id
        beacon = server.addresses[0]
        good = build_relay_frame(sid, b"g" * 1400)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.1", 0))
            # the session's frames from an address that is neither side: all dropped
            gso_send(stranger, good * 10, len(good), beacon)
            # garbage runs that start like relay frames: unknown sessions, not relay frames
            for _ in range(20):
                junk = b"\x20" + os.urandom(1399)
                gso_send(stranger, junk * 8, len(junk), beacon)
                gso_send(stranger, os.urandom(1200) * 5, 1200, beacon)
        await b.nothing()
        await a.nothing()
        assert server.relay.dropped["wrong_source"] == 10
        assert server.relay.forwarded_datagrams == 0 and server.relay.forwarded_runs == 0

        # A's own run with a foreign frame in the middle: the others still go, one by one
        foreign = build_relay_frame(b"\x07" * 8, b"f" * 1400)
        a.client.endpoint.send_run(good * 3 + foreign + good * 3, len(good), beacon)
        assert await frames_at(b, 6) == [good] * 6
        assert server.relay.dropped["unknown_session"] >= 1 and server.relay.forwarded_runs == 0

        # a run bigger than what the rate leaves: as many as fit go, the rest dropped as before
        left = int(server.relay.session(sid).a.bucket.tokens)  # type: ignore[union-attr]  # granted above
        count = left // len(good) + 5
        a.client.endpoint.send_run(good * count, len(good), beacon)
        assert await frames_at(b, left // len(good)) == [good] * (left // len(good))
        await b.nothing()
        assert server.relay.dropped["throttled"] >= 5 and server.relay.forwarded_runs == 0

        # the pair still relays, and the beacon logged no internal error meanwhile
        await asyncio.sleep(1.2)  # the bucket refills (1000 B/s)
        small = build_relay_frame(sid, b"ok")
        a.client.endpoint.sendto(small, beacon)
        assert (await b.received())[0] == small
        assert 'reason="internal_error"' not in server.metrics.render().decode()
        await close_all(a, b)


async def test_a_strangers_declined_runs_count_once_per_datagram(start_beacon):
    """A stranger's GSO runs with a live session's header are declined whole, then judged one by
    one: each datagram counted once by the beacon's socket (not for the run and again one by one),
    no run counted, no session or entry left for the stranger, and the pair still relays."""
    async with start_beacon() as server:
        a, b, _, grant_a, _ = await granted_pair(server)
        endpoint = next(e for e in server._endpoints if e.gro)  # the socket reading runs now
        beacon = server.addresses[0]
        good = build_relay_frame(grant_a.session_id, b"g" * 1400)
        received, reads, sessions = endpoint.datagrams_received, endpoint.coalesced_reads, server.relay.session_count
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.1", 0))
            for _ in range(10):
                gso_send(stranger, good * 6, len(good), beacon)
        await b.nothing()
        assert server.relay.dropped["wrong_source"] == 60
        assert 60 <= endpoint.datagrams_received - received <= 70  # once each (+ the pair's own few)
        assert endpoint.coalesced_reads == reads and server.relay.forwarded_runs == 0
        assert server.relay.session_count == sessions
        small = build_relay_frame(grant_a.session_id, b"ok")
        a.client.endpoint.sendto(small, beacon)
        assert (await b.received())[0] == small
        await close_all(a, b)


async def test_a_worker_of_several_forwards_runs_one_by_one():
    """With several workers the steering program picks a worker by a read's first datagram, and
    GRO would join frames of sessions held by different workers: a worker never asks for GRO;
    a run sent with GSO still crosses, split by the kernel, frame by frame."""
    async with BeaconServer(loopback_config(), create_bundle(), worker_index=0) as server:
        a, b, _, grant_a, _ = await granted_pair(server)
        assert server.relay.session_count == 1 and not any(endpoint.gro for endpoint in server._endpoints)
        frames = [build_relay_frame(grant_a.session_id, bytes([i]) * 1200) for i in range(10)]
        a.client.endpoint.send_run(b"".join(frames), len(frames[0]), server.addresses[0])
        assert await frames_at(b, len(frames)) == frames
        assert server.relay.forwarded_datagrams == len(frames) and server.relay.forwarded_runs == 0
        await close_all(a, b)
