"""A bounded adversarial set for the beacon, run in CI (~10 s): random QUIC frames inside real
connections, random bytes on the control stream, garbage datagrams. After each: no traceback in
the beacon's log, nothing unhandled in the event loop, bounded receive buffers and RSS, and a
legitimate pair still meets."""

from __future__ import annotations

import asyncio
import tempfile

from attack_support import hostile, rss_bytes, watched_beacon
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from discretpeer.proto import wire

KB = 1024
MAX_BUFFERED_PER_CONNECTION = 64 * KB
varint = hostile.varint

stream_ids = st.sampled_from([0, 0, 0, 1, 2, 3, 4, 8, 400])
codes = st.integers(0, 2**62 - 1)
offsets = st.one_of(st.integers(0, 40 * KB), st.integers(0, 2**62 - 2))
small_bytes = st.binary(max_size=48)

frames = st.one_of(
    st.builds(hostile.stop_sending, stream_ids, codes),
    st.builds(hostile.reset_stream, stream_ids, codes, st.one_of(st.integers(0, 64 * KB), offsets)),
    st.builds(
        lambda s, o, d, f: hostile.stream_frame(s, min(o, 2**62 - 1 - len(d)), d, f),
        stream_ids,
        offsets,
        small_bytes,
        st.booleans(),
    ),
    # CRYPTO in 1-RTT, possibly far ahead
    st.builds(lambda o, d: (0x06, varint(o) + varint(len(d)) + d), st.integers(0, 600 * KB), small_bytes),
    # unknown or reserved frame types with a random body
    st.builds(lambda t, d: (t, d), st.one_of(st.integers(0x21, 0x2F), st.integers(0x40, 0x3FFF)), small_bytes),
    # known frame types with random bodies: MAX_DATA..STREAMS_BLOCKED, NEW_CONNECTION_ID, RETIRE,
    # PATH_CHALLENGE/RESPONSE, CONNECTION_CLOSE, HANDSHAKE_DONE, DATAGRAM, ACK
    st.builds(
        lambda t, d: (t, d),
        st.sampled_from(
            [0x02, 0x03, 0x07, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1E, 0x30, 0x31]
        ),
        small_bytes,
    ),
    st.just((0x01, b"")),  # PING
)

# what goes in order on the control stream: garbage, truncated or valid frames
control_bytes = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.builds(lambda t, d: bytes([t]) + len(d).to_bytes(2, "big") + d, st.integers(0, 255), small_bytes),
    st.builds(lambda n: wire.encode(wire.Ping(nonce=n)), st.integers(0, 2**63 - 1)),
    st.builds(
        lambda t: wire.encode(wire.Announce(add=(t,))), st.binary(min_size=wire.TOKEN_SIZE, max_size=wire.TOKEN_SIZE)
    ),
)

actions = st.lists(
    st.one_of(
        st.tuples(st.just("frames"), st.lists(frames, min_size=1, max_size=6)),
        st.tuples(st.just("control"), control_bytes),
    ),
    min_size=1,
    max_size=8,
)


async def _scenario(connections: list[tuple[bool, list]]) -> None:
    with tempfile.TemporaryDirectory() as log_dir:
        async with watched_beacon(log_dir) as beacon:
            attackers = []
            try:
                for hello, steps in connections:
                    attacker = await beacon.hostile(hello=hello)
                    attackers.append(attacker)
                    for kind, value in steps:
                        if attacker.closed:
                            break
                        if kind == "frames":
                            attacker.send_frames(*value)
                        else:
                            attacker.client.send_raw(value)
                        await asyncio.sleep(0.005)
                await asyncio.sleep(0.1)
                assert beacon.buffered_bytes() <= MAX_BUFFERED_PER_CONNECTION * len(attackers)
            finally:
                for attacker in attackers:
                    await attacker.close()
            await beacon.pair_meets()
            beacon.assert_clean()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), actions), min_size=1, max_size=3))
@example([(True, [("frames", [hostile.stop_sending(0)])] + [("control", wire.encode(wire.Ping(nonce=1)))] * 5)])
@example([(True, [("frames", [hostile.stream_frame(4, 30 * KB, b"x"), hostile.stream_frame(0, 60 * KB, b"x")])])])
def test_random_frames_inside_real_connections(connections):
    asyncio.run(_scenario(connections))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=1400),
            st.builds(lambda b, d: bytes([b]) + d, st.integers(0xC0, 0xFF), st.binary(min_size=20, max_size=1300)),
            st.builds(lambda v: hostile.junk_initial(1200, v), st.integers(0, 2**32 - 1)),
            st.builds(lambda size: hostile.junk_initial(size), st.integers(29, 1500)),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_garbage_datagrams(datagrams):
    """Random datagrams (QUIC-looking or not) at the beacon's port: no traceback, no answer
    larger than the datagram that caused it, and the beacon keeps serving."""

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as log_dir:
            async with watched_beacon(log_dir) as beacon:
                raw = hostile.RawSocket()
                try:
                    for data in datagrams:
                        raw.send(data, beacon.address)
                    await raw.collect(0.15)
                    assert raw.received <= 3 * raw.sent
                finally:
                    raw.close()
                await beacon.pair_meets()
                beacon.assert_clean()

    asyncio.run(scenario())


async def test_many_hostile_connections_keep_rss_bounded(tmp_path):
    """48 connections each trying the out-of-order attack and random frames at once: RSS grows
    by what 48 registered connections cost, not by what their offsets ask for."""
    async with watched_beacon(tmp_path) as beacon:
        rss_before = rss_bytes()
        attackers = [await beacon.hostile() for _ in range(48)]
        try:
            await asyncio.gather(*(a.out_of_order(streams=(0,), rounds=6, pause=0.03) for a in attackers))
            for attacker in attackers:
                attacker.send_frames((0x06, varint(300 * KB) + varint(1) + b"x"), hostile.stop_sending(4))
            await asyncio.sleep(0.2)
            grown = rss_bytes() - rss_before
            assert beacon.buffered_bytes() <= 48 * MAX_BUFFERED_PER_CONNECTION
        finally:
            for attacker in attackers:
                await attacker.close()
        # the clients live in this process too: ~150 KB each for both ends is generous
        assert grown < 48 * 300 * KB, f"RSS grew by {grown // KB} KB"
        await beacon.pair_meets()
        beacon.assert_clean()


def test_hypothesis_strategies_are_well_formed():
    """The generated frames are what they claim: a STREAM frame decodes to its parts."""
    frame_type, body = hostile.stream_frame(4, 1000, b"ab", True)
    assert frame_type == 0x0F
    assert body == varint(4) + varint(1000) + varint(2) + b"ab"
