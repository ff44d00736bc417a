"""Relay rates: the per-peer default lets a bulk copy through at a useful speed; the beacon-wide
cap holds for all sessions together (sans-I/O table with simulated time, then a real beacon)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import tomllib

from beacon import BeaconConfig
from beacon.relay import RelayQuota, RelayTable
from discretpeer.proto.relay_frame import build_relay_frame
from tests.beacon.test_beacon_relay import close_all, granted_pair

PAYLOAD = 1350  # a relayed QUIC datagram


def table(**quota) -> RelayTable:
    ids = (n.to_bytes(8, "big") for n in itertools.count(1))
    return RelayTable(RelayQuota(**quota), random=lambda size: next(ids))


def session(r: RelayTable, n: int, now: float = 0.0):
    a, b = ("198.51.100.1", 1000 + n), ("198.51.100.2", 2000 + n)
    token = n.to_bytes(32, "big")
    ia, ib = bytes([n]) * 8, bytes([n + 100]) * 8
    r.request(2 * n, ia, token, 2 * n + 1, ib, "via", a, now)
    outcome = r.request(2 * n + 1, ib, token, 2 * n, ia, "via", b, now)
    assert outcome.session is not None
    return outcome.session, a


def quota_from_config() -> RelayQuota:
    c = BeaconConfig()
    return RelayQuota(
        rate_bytes_per_second=c.relay_rate_bytes_per_second,
        burst_bytes=c.relay_burst_bytes,
        total_rate_bytes_per_second=c.relay_total_rate_bytes_per_second,
        max_bytes=c.relay_max_bytes,
    )


def offer(r: RelayTable, sessions, seconds: float, rate_each: float) -> list[int]:
    """Each session's sender offers ``rate_each`` bytes/s for ``seconds`` (simulated, 1 ms steps);
    returns the bytes each got through."""
    delivered = [0] * len(sessions)
    frames = [build_relay_frame(s.session_id, b"\x40" * (PAYLOAD - 9)) for s, _ in sessions]
    per_step = rate_each / 1000
    owed = [0.0] * len(sessions)
    order = list(range(len(sessions)))
    rng = random.Random(1)
    for step in range(int(seconds * 1000)):
        now = step / 1000
        rng.shuffle(order)  # datagrams of different sessions arrive interleaved
        for i in order:
            owed[i] += per_step
            while owed[i] >= PAYLOAD:
                owed[i] -= PAYLOAD
                if r.route(frames[i], sessions[i][1], now) is not None:
                    delivered[i] += PAYLOAD
    return delivered


def test_default_rate_moves_50_mb_in_about_5_seconds():
    r = RelayTable(quota_from_config())
    s = session(r, 1)
    got = offer(r, [s], 5.0, 20_000_000)[0]  # a sender that could do 20 MB/s
    assert got >= 50_000_000 * 0.98, got  # ~10 MB/s: 50 MB in ~5 s (the old 1 MB/s default: 5 MB)
    assert got <= 5.0 * BeaconConfig().relay_rate_bytes_per_second + BeaconConfig().relay_burst_bytes + PAYLOAD


def test_total_cap_holds_for_all_sessions_together():
    r = table(rate_bytes_per_second=10_000_000, burst_bytes=1 << 20, total_rate_bytes_per_second=15_000_000)
    sessions = [session(r, n) for n in range(1, 5)]
    got = offer(r, sessions, 2.0, 8_000_000)  # each under its own rate, 32 MB/s together
    total = sum(got)
    assert 15_000_000 * 2 * 0.95 <= total <= 15_000_000 * 2 + 1_500_000 + PAYLOAD, got
    assert min(got) > total / 4 * 0.7, got  # shared, not one session starving the others
    assert r.dropped["throttled_total"] > 0 and r.dropped["throttled"] == 0


def test_zero_total_means_no_cap():
    r = table(rate_bytes_per_second=10_000_000, burst_bytes=1 << 20, total_rate_bytes_per_second=0)
    sessions = [session(r, n) for n in range(1, 4)]
    assert sum(offer(r, sessions, 1.0, 8_000_000)) >= 3 * 8_000_000 * 0.97


def test_example_config_explains_the_relay_defaults():
    from tests.beacon.test_beacon_config import ROOT

    text = (ROOT / "Beacon.conf.toml.example").read_text()
    values = tomllib.loads(text)
    assert values["relay_rate_bytes_per_second"] == BeaconConfig().relay_rate_bytes_per_second >= 5_000_000
    assert values["relay_total_rate_bytes_per_second"] == BeaconConfig().relay_total_rate_bytes_per_second
    comment = text.split("relay_total_rate_bytes_per_second =")[0].rsplit("\n\n", 1)[1]
    assert "all sessions together" in comment and "0 = no cap" in comment and "Mbit/s" in comment


async def test_real_beacon_enforces_the_total_cap(start_beacon):
    """Two sessions on a real beacon, each far under its own rate; together over the cap: the
    beacon forwards about the cap, and counts the rest as throttled_total."""
    async with start_beacon(
        relay_rate_bytes_per_second=10_000_000, relay_total_rate_bytes_per_second=100_000, relay_burst_bytes=1 << 20
    ) as server:
        pairs = [await granted_pair(server) for _ in range(2)]
        frames = [build_relay_frame(grant.session_id, os.urandom(1000)) for _, _, _, grant, _ in pairs]
        beacon = server.addresses[0]
        for _ in range(40):  # 2 x 40 x ~1 KB at once: 80 KB, while the cap's burst is 10 KB
            for (a, _, _, _, _), frame in zip(pairs, frames, strict=True):
                a.client.endpoint.sendto(frame, beacon)
        await asyncio.sleep(0.3)
        received = sum(b.datagrams.qsize() for _, b, _, _, _ in pairs)
        assert 8 <= received <= 50, received  # ~10 KB burst + 30 KB over 0.3 s, not 80
        assert server.relay.dropped["throttled_total"] >= 30
        assert server.relay.dropped["throttled"] == 0
        for a, b, _, _, _ in pairs:
            await close_all(a, b)
