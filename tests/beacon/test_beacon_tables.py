"""Sans-I/O parts of the beacon: meeting table, limits, relay table (no sockets)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beacon.limits import KeyedBuckets, KeyedCounts, RateMeter, TokenBucket, ip_key
from beacon.meetings import MeetingTable, TooManyTokens
from beacon.relay import RelayQuota, RelayTable
from discretpeer.proto.relay_frame import build_relay_frame
from discretpeer.proto.wire import Address, ErrorCode, Introduction

T1, T2, T3 = (bytes([n]) * 32 for n in (1, 2, 3))


def inst(n: int) -> bytes:
    return bytes([n]) * 16


def table(max_tokens: int = 8, max_peers: int = 4) -> MeetingTable:
    t = MeetingTable(max_tokens, max_peers)
    for key in range(1, 6):
        t.join(key, inst(key), Address("203.0.113.1", 1000 + key))
    return t


# --- meetings -------------------------------------------------------------------------------


def test_two_holders_are_introduced_both_ways():
    t = table()
    assert t.announce(1, [T1], candidates=(Address("10.0.0.1", 5),)).introductions == []
    intros = t.announce(2, [T1]).introductions
    assert intros == [
        (2, Introduction(T1, inst(1), Address("203.0.113.1", 1001), (Address("10.0.0.1", 5),))),
        (1, Introduction(T1, inst(2), Address("203.0.113.1", 1002), ())),
    ]


def test_newcomer_meets_everyone_already_there():
    t = table()
    t.announce(1, [T1])
    t.announce(2, [T1])
    intros = t.announce(3, [T1]).introductions
    assert sorted((k, i.instance) for k, i in intros) == [(1, inst(3)), (2, inst(3)), (3, inst(1)), (3, inst(2))]


def test_no_duplicate_no_self_withdraw_reannounce_remove():
    t = table()
    t.announce(1, [T1, T1])
    assert t.announce(1, [T1]).introductions == []
    assert len(t.announce(2, [T1]).introductions) == 2
    assert t.announce(2, [T1]).introductions == []
    t.announce(2, withdraw=[T1])
    assert t.holders(T1) == [1]
    assert len(t.announce(2, [T1]).introductions) == 2
    assert len(t.announce(2, add=[T1], withdraw=[T1]).introductions) == 2  # same frame: re-announce
    t.remove(1)
    assert t.holders(T1) == [2] and 1 not in t
    assert t.announce(3, [T1]).introductions[0][1].instance == inst(2)
    t.remove(2), t.remove(3)
    assert t.token_count == 0 and t.tokens_held == 0


def test_same_instance_on_two_connections_is_not_introduced_to_itself():
    t = table()
    t.join(9, inst(1), Address("203.0.113.9", 9))
    t.announce(1, [T1])
    assert t.announce(9, [T1]).introductions == []


def test_token_cap_rejects_whole_announce():
    t = table(max_tokens=2)
    t.announce(1, [T1, T2])
    with pytest.raises(TooManyTokens):
        t.announce(1, [T3])
    assert t.tokens_of(1) == {T1, T2}
    t.announce(1, [T3], withdraw=[T1])  # withdrawals count first
    assert t.tokens_of(1) == {T2, T3}


def test_peers_per_token_cap():
    t = table(max_peers=2)
    t.announce(1, [T1])
    t.announce(2, [T1])
    result = t.announce(3, [T1])
    assert result.introductions == [] and result.full == [T1]
    assert t.tokens_of(3) == frozenset()


def spread(max_peers: int, per_ip: int, members: dict[int, str]) -> MeetingTable:
    """A table whose connection ``key`` comes from address ``members[key]``."""
    t = MeetingTable(8, max_peers, per_ip)
    for key, host in members.items():
        t.join(key, inst(key), Address(host, 1000 + key))
    return t


def test_one_address_holds_its_share_newest_wins_within_it():
    # connections 1..6 from one address, 7 and 8 from two others; 16 slots, 2 per address
    t = spread(16, 2, {**{k: "198.51.100.1" for k in range(1, 7)}, 7: "198.51.100.7", 8: "198.51.100.8"})
    for key in range(1, 7):
        t.announce(key, [T1])
    assert t.holders(T1) == [5, 6]  # each newcomer of the address replaced its oldest holder
    assert t.evictions == 4
    result = t.announce(7, [T1])
    assert result.full == [] and result.evicted == []
    assert {k for k, _ in t.announce(8, [T1]).introductions} == {5, 6, 7, 8}
    assert t.introduced(7, T1, inst(8)) == [8] and t.introduced(8, T1, inst(7)) == [7]


def test_full_token_goes_to_the_newcomer_from_the_least_represented_address():
    # 4 slots held by two squatting addresses (2 each); the real pair comes from two others
    hosts = {
        1: "203.0.113.1",
        2: "203.0.113.1",
        3: "203.0.113.2",
        4: "203.0.113.2",
        5: "198.51.100.5",
        6: "198.51.100.6",
        7: "203.0.113.1",
    }
    t = spread(4, 2, hosts)
    for key in (1, 2, 3, 4):
        t.announce(key, [T1])
    first = t.announce(5, [T1])
    assert first.full == [] and first.evicted == [(1, T1)]  # oldest holder of the largest address
    second = t.announce(6, [T1])
    assert second.evicted == [(3, T1)]
    assert t.introduced(6, T1, inst(5)) == [5]
    # the squatters re-announce, again and again: no address is above anyone's share any more
    for _ in range(3):
        for key in (1, 3, 7):
            assert t.announce(key, [T1]).full == [T1]
        assert t.announce(2, withdraw=[T1], add=[T1]).evicted == []
    assert sorted(t.holders(T1)) == [2, 4, 5, 6]
    assert t.introduced(5, T1, inst(6)) == [6]


def test_genuinely_full_token_refuses_and_says_so():
    t = spread(2, 2, {1: "203.0.113.1", 2: "203.0.113.2", 3: "203.0.113.3"})
    t.announce(1, [T1])
    t.announce(2, [T1])
    result = t.announce(3, [T1])
    assert result.full == [T1] and result.evicted == [] and result.introductions == []
    assert t.tokens_of(3) == frozenset() and t.introduced(3, T1, inst(1)) == []


def test_introductions_are_remembered_while_both_hold_the_token():
    t = table()
    t.join(9, inst(2), Address("203.0.113.9", 9))  # claims connection 2's instance
    assert t.introduced(1, T1, inst(2)) == []  # nobody announced anything
    t.announce(1, [T1])
    t.announce(2, [T1])
    t.announce(9, [T1])
    assert t.introduced(1, T1, inst(2)) == [2, 9]  # oldest introduction first
    assert t.introduced(2, T1, inst(1)) == [1] and t.introduced(9, T1, inst(1)) == [1]
    assert t.introduced(1, T2, inst(2)) == []  # another token
    t.announce(2, withdraw=[T1])
    assert t.introduced(1, T1, inst(2)) == [9] and t.introduced(2, T1, inst(1)) == []
    t.remove(9)
    assert t.introduced(1, T1, inst(2)) == []


def test_new_candidates_are_introduced_again_to_those_already_met():
    """A port mapping granted after the introduction: the others learn it (or they stay relayed)."""
    t = table()
    t.announce(1, [T1, T2])
    t.announce(2, [T1])
    t.announce(3, [T2])
    t.announce(4, [T3])
    mapped = (Address("198.51.100.7", 4242),)
    intros = t.announce(1, candidates=mapped).introductions
    assert sorted((k, i.token) for k, i in intros) == [(2, T1), (3, T2)]  # not 4: never met
    assert all(i.instance == inst(1) and i.candidates == mapped for _, i in intros)
    assert t.announce(1, candidates=mapped).introductions == []  # unchanged: nothing
    t.announce(3, withdraw=[T2])
    assert [k for k, _ in t.announce(1, candidates=()).introductions] == [2]


ops = st.lists(
    st.tuples(
        st.sampled_from(["announce", "withdraw", "remove", "join"]),
        st.integers(1, 5),
        st.lists(st.sampled_from([T1, T2, T3]), max_size=3),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_meeting_table_invariants(operations):
    t = MeetingTable(max_tokens_per_connection=2, max_peers_per_token=3, max_peers_per_token_per_ip=2)
    joined: set[int] = set()
    for op, key, toks in operations:
        if op == "join":
            t.join(key, inst(key), Address(f"198.51.100.{key % 3}", key))
            joined.add(key)
            continue
        if key not in joined:
            continue
        if op == "remove":
            t.remove(key)
            joined.discard(key)
            continue
        before = {k: t.tokens_of(k) for k in joined}
        try:
            result = t.announce(key, add=toks if op == "announce" else (), withdraw=toks if op == "withdraw" else ())
        except TooManyTokens:
            assert {k: t.tokens_of(k) for k in joined} == before
            continue
        assert not set(result.full) & t.tokens_of(key)
        for victim, tok in result.evicted:
            assert victim != key and tok not in t.tokens_of(victim) and tok in t.tokens_of(key)
        pairs = [(k, i.instance, i.token) for k, i in result.introductions]
        for k, instance, token in pairs:
            assert instance != inst(k)  # never introduced to itself
            assert (int(instance[0]), inst(k), token) in pairs  # always both ways
        assert len(pairs) == len(set(pairs))
    assert all(len(t.tokens_of(k)) <= 2 for k in joined)
    assert all(len(t.holders(tok)) <= 3 for tok in (T1, T2, T3))
    assert all(sum(1 for k in t.holders(tok) if k % 3 == ip) <= 2 for tok in (T1, T2, T3) for ip in range(3))
    assert t.tokens_held == sum(len(t.tokens_of(k)) for k in joined)
    for k in joined:  # remembered introductions: symmetric, only between current holders
        for tok in (T1, T2, T3):
            for other in joined:
                if t.introduced(k, tok, inst(other)):
                    assert k in t.introduced(other, tok, inst(k))
                    assert tok in t.tokens_of(k) and tok in t.tokens_of(other)


# --- limits ---------------------------------------------------------------------------------


def test_token_bucket():
    b = TokenBucket(rate=2, burst=3, now=0)
    assert [b.take(0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5) and not b.take(0.5)
    assert b.take(100, 3) and not b.take(100)


def test_keyed_buckets_bounded():
    kb = KeyedBuckets(rate=1, burst=1, max_keys=3)
    for n in range(10):
        assert kb.take(n, 0)
        assert len(kb) <= 3
    assert not kb.take(9, 0)


def test_keyed_counts_and_rate_meter():
    c = KeyedCounts()
    assert c.add("a") == 1 and c.add("a") == 2
    c.remove("a"), c.remove("a"), c.remove("a")
    assert c.get("a") == 0 and len(c) == 0
    m = RateMeter(0.0)
    for i in range(100):
        m.add(i / 100)
    assert 90 <= m.rate(1.0) <= 100
    assert m.rate(10.0) == 0


def test_ip_key():
    assert ip_key("192.0.2.1") == "192.0.2.1"
    assert ip_key("2001:db8:1:2:3:4:5:6") == ip_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert ip_key("fe80::1%eth0") == "fe80::/64"


# --- relay table ----------------------------------------------------------------------------

A, B, C = ("198.51.100.1", 1111), ("198.51.100.2", 2222), ("198.51.100.3", 3333)


def relay(**quota) -> RelayTable:
    ids = (n.to_bytes(8, "big") for n in itertools.count(1))
    return RelayTable(RelayQuota(**quota), random=lambda size: next(ids))


def grant(r: RelayTable, now: float = 0.0):
    assert r.request(1, inst(1), T1, 2, inst(2), "via", A, now).session is None
    outcome = r.request(2, inst(2), T1, 1, inst(1), "via", B, now)
    assert outcome.session is not None and outcome.new
    return outcome.session


def test_relay_pairs_requests_and_routes():
    r = relay()
    s = grant(r)
    frame = build_relay_frame(s.session_id, b"x" * 100)
    assert r.route(frame, A, 0) == ("via", B)
    assert r.route(frame, B, 0) == ("via", A)
    assert r.route(frame, C, 0) is None and r.dropped["wrong_source"] == 1
    assert r.route(build_relay_frame(b"\0" * 8, b"x"), A, 0) is None and r.dropped["unknown_session"] == 1
    assert r.route(b"\x20" + s.session_id, A, 0) is None and r.dropped["not_relay"] == 1
    assert r.forwarded_bytes == 2 * len(frame)
    again = r.request(1, inst(1), T1, 2, inst(2), "via", A, 1)
    assert again.session is s and not again.new


def test_relay_mismatched_requests_do_not_pair():
    r = relay()
    r.request(1, inst(1), T1, 2, inst(2), "via", A, 0)
    assert r.request(2, inst(2), T2, 1, inst(1), "via", B, 0).session is None  # other token
    assert r.request(3, inst(3), T1, 1, inst(1), "via", C, 0).session is None  # not the named peer
    assert r.request(1, inst(1), T1, 1, inst(1), "via", A, 0).refused == ErrorCode.RELAY_REFUSED


def test_relay_quotas():
    r = relay(max_bytes=250, rate_bytes_per_second=1000, burst_bytes=1600)
    s = grant(r)
    frame = build_relay_frame(s.session_id, b"x" * 91)  # 100 bytes
    assert r.route(frame, A, 0) and r.route(frame, B, 0)
    assert r.route(frame, A, 0) is None
    [ended] = r.ended
    assert ended.code == ErrorCode.RELAY_BYTES_EXCEEDED and len(ended.notify) == 2
    assert r.session_count == 0


def test_relay_rate_duration_and_limits():
    r = relay(rate_bytes_per_second=1000, burst_bytes=1600, max_seconds=10, max_sessions=1)
    s = grant(r)
    frame = build_relay_frame(s.session_id, b"x" * 791)  # 800 bytes
    assert [r.route(frame, A, 0) is not None for _ in range(3)] == [True, True, False]
    assert r.route(frame, A, 1.0) is not None  # refilled
    assert r.request(3, inst(3), T2, 4, inst(4), "via", C, 0).session is None
    assert r.request(4, inst(4), T2, 3, inst(3), "via", C, 0).refused == ErrorCode.RELAY_TOO_MANY_SESSIONS
    assert r.expire(5) == []
    [ended] = r.expire(10)
    assert ended.code == ErrorCode.RELAY_DURATION_EXCEEDED


def test_relay_disabled_pending_bounds_and_expiry():
    assert relay(enabled=False).request(1, inst(1), T1, 2, inst(2), "v", A, 0).refused == ErrorCode.RELAY_REFUSED
    r = relay(max_pending=2, request_timeout=5)
    r.request(1, inst(1), T1, 2, inst(2), "v", A, 0)
    r.request(1, inst(1), T2, 2, inst(2), "v", A, 1)
    assert r.request(1, inst(1), T3, 2, inst(2), "v", A, 2).refused is not None
    assert [p.token for p in r.expire_pending(5)] == [T1]
    assert r.pending_count == 1
    r.drop_connection(1)
    assert r.pending_count == 0


def test_relay_drop_connection_tells_the_other():
    r = relay()
    s = grant(r)
    [ended] = r.drop_connection(1)
    assert ended.code == ErrorCode.RELAY_PEER_GONE and [side.conn for side in ended.notify] == [2]
    assert r.get(s.session_id) is None and r.sessions_of(2) == []


def test_relay_pairs_connections_not_claimed_instances():
    r = relay()
    assert r.request(1, inst(1), T1, 2, inst(2), "via", A, 0).session is None  # 1 asks for connection 2
    # connection 3 claims 2's instance and asks for 1: it is not the connection 1 asked for
    assert r.request(3, inst(2), T1, 1, inst(1), "via", C, 0).session is None
    outcome = r.request(2, inst(2), T1, 1, inst(1), "via", B, 0)
    assert outcome.session is not None and {outcome.session.a.conn, outcome.session.b.conn} == {1, 2}
    frame = build_relay_frame(outcome.session.session_id, b"x" * 50)
    assert r.route(frame, A, 0) == ("via", B)
    assert r.route(frame, C, 0) is None and r.misdirected is outcome.session
    assert r.pending_count == 1  # connection 3's request waits for a mirror that never comes
    [expired] = r.expire_pending(r.quota.request_timeout)
    assert expired.conn == 3


def test_relay_rebind_moves_one_side():
    r = relay()
    s = grant(r)
    frame = build_relay_frame(s.session_id, b"x" * 50)
    assert r.route(frame, C, 0) is None and r.misdirected is s
    r.rebind(s, 1, C)  # connection 1 migrated to C (the server checked that QUIC validated it)
    assert r.route(frame, C, 0) == ("via", B)
    assert r.route(frame, B, 0) == ("via", C)
    assert r.route(frame, A, 0) is None  # the old address no longer speaks for the session
