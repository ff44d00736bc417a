"""The Redis store's Lua script decides exactly what the in-memory MeetingTable decides (places
shared per address, eviction, TOKEN_FULL, introductions, no self-introduction), for random
sequences of announces, withdrawals and departures (hypothesis, on a real redis-server)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beacon.meetings import MeetingTable
from beacon.store_redis import ANNOUNCE_LUA, PREFIX, REMOVE_LUA, _mapping
from discretpeer.proto.wire import Address
from tests.scaleout.redis_server import RedisServer

redis_py = pytest.importorskip("redis")

MEMBERS = 8
IPS = ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
TOKENS = [bytes([i]) * 32 for i in range(2)]


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    client = redis_py.Redis(host="127.0.0.1", port=server.port)
    yield client
    client.close()
    server.stop()


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "withdraw", "leave"]),
        st.integers(0, MEMBERS - 1),
        st.sampled_from(TOKENS),
    ),
    min_size=5,
    max_size=60,
)
layout = st.tuples(
    st.lists(st.sampled_from(IPS), min_size=MEMBERS, max_size=MEMBERS),  # each member's address
    st.lists(st.integers(0, MEMBERS - 1), min_size=MEMBERS, max_size=MEMBERS),  # instance: shared sometimes
    st.integers(2, 5),  # max_peers_per_token
    st.integers(2, 3),  # max_peers_per_token_per_ip
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout, ops)
@example(  # a tie between two addresses above the newcomer's share: the one that came first gives way
    layout=(
        ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "2001:db8::1", "10.0.0.1", "10.0.0.2", "2001:db8::1"],
        list(range(MEMBERS)),
        4,
        2,
    ),
    operations=[("add", m, TOKENS[0]) for m in range(5)],
)
def test_script_matches_the_meeting_table(redis_client, layout, operations):
    ips, instance_of, max_peers, per_ip = layout
    r = redis_client
    r.flushdb()
    announce, remove = r.script_load(ANNOUNCE_LUA), r.script_load(REMOVE_LUA)
    table = MeetingTable(128, max_peers, per_ip)
    instances = [bytes([i]) * 16 for i in instance_of]
    joined: set[int] = set()
    generation = [0] * MEMBERS  # a member that left comes back as a new connection

    def key(m: int) -> str:
        return f"node{m % 2}:{m}-{generation[m]}"

    def join(m: int) -> None:
        if m not in joined:
            joined.add(m)
            table.join(key(m), instances[m], Address(ips[m], 4000 + m))
            fields = {"i": instances[m], "o": f"{ips[m]}|{4000 + m}", "c": "", "p": table._members[key(m)].ip}
            if m % 3:  # some members reported their NAT's mapping (1 or 2), the others nothing
                table.set_mapping(key(m), m % 3)
                fields["b"] = str(m % 3)
            r.hset(PREFIX + "m:" + key(m), mapping=fields)

    for op, m, token in operations:
        if op == "leave":
            if m in joined:
                table.remove(key(m))
                r.evalsha(remove, 0, PREFIX, key(m))
                joined.discard(m)
                generation[m] += 1
            continue
        join(m)
        add, withdraw = ([token], []) if op == "add" else ([], [token])
        if op == "withdraw" and token not in table.tokens_of(key(m)):
            withdraw = []
        if op == "add" and token in table.tokens_of(key(m)):
            add = []  # the store sends only new tokens to the script
        expected = table.announce(key(m), add, withdraw)
        full, evicted, intros = r.evalsha(
            announce, 0, PREFIX, key(m), instances[m], 30, max_peers, per_ip, len(withdraw), *withdraw, *add
        )
        assert [bytes(t) for t in full] == expected.full
        got_evicted = [(evicted[i].decode(), bytes(evicted[i + 1])) for i in range(0, len(evicted), 2)]
        assert got_evicted == expected.evicted
        got_intros = {
            (intros[i + 1].decode(), bytes(intros[i]), _mapping(intros[i + 5])) for i in range(0, len(intros), 6)
        }
        # the others introduced to the announcer (and it to them), each with the mapping it reported
        want = {
            (target, intro.token, table._members[target].mapping)
            for target, intro in expected.introductions
            if target != key(m)
        }
        assert got_intros == want
        for t in TOKENS:
            holders = [h.decode() for h in r.zrange(PREFIX.encode() + b"t:" + t, 0, -1)]
            assert holders == table.holders(t)
