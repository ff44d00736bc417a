"""The shared meeting table on a real redis-server: two beacons ("machines": same certificate,
different ports of 127.0.0.1) act as one; its rules hold globally; it survives Redis going away."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from beacon import BeaconServer, loopback_config
from beacon.store import StoreUnavailable
from beacon.store_redis import RedisStore
from certs import create_bundle
from discretpeer.proto import wire
from discretpeer.proto.wire import ErrorCode
from tests.scaleout.redis_server import RedisServer, free_port

BeaconClient = __import__("beacon_test_client").BeaconClient


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def announced(client, server) -> bytes:
    """A new token ``client`` announced, once ``server``'s store lists its holder (the store is shared)."""
    token = os.urandom(32)
    client.announce(add=[token])
    await wait_for(lambda: server.store.holders(token))
    return token


@contextlib.asynccontextmanager
async def beacons(url: str, count: int = 2, **changes):
    bundle = create_bundle()
    servers = []
    try:
        for _ in range(count):
            server = BeaconServer(loopback_config(store=url, store_ttl_seconds=3, **changes), bundle)
            await server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            await server.stop()


@contextlib.asynccontextmanager
async def clients(*servers):
    made = []
    try:
        for server in servers:
            made.append(await BeaconClient.connect(server.addresses[0], server.fingerprint))
        yield made
    finally:
        for client in made:
            await client.close()


async def introductions(client, timeout: float = 0.5) -> list[wire.Introduction]:
    got = []
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            message = await client.recv(timeout)
            if isinstance(message, wire.Introduction):
                got.append(message)
    return got


async def meet_across(one, two, *, again: bool = False) -> None:
    """A peer on each beacon announces one token: both are introduced, to each other only (and,
    with ``again``, announcing it once more introduces nobody twice)."""
    async with clients(one, two) as (a, b):
        token = await announced(a, one)
        b.announce(add=[token])
        to_b = await b.expect(wire.Introduction)
        to_a = await a.expect(wire.Introduction)
        assert (to_b.instance, to_b.token) == (a.instance, token)
        assert (to_a.instance, to_a.token) == (b.instance, token)
        assert to_b.observed == wire.Address.from_socket(a.local_address)
        assert to_a.observed == wire.Address.from_socket(b.local_address)
        if again:
            b.announce(add=[token])
            await a.expect_nothing(0.3)
            await b.expect_nothing(0.1)


async def test_peers_on_two_machines_meet(redis_server):
    async with beacons(redis_server.url) as (one, two):
        assert one.fingerprint == two.fingerprint and one.port != two.port
        await meet_across(one, two, again=True)


async def test_new_candidates_reach_those_met_on_another_machine(redis_server):
    """A port mapping granted after the introduction reaches the partner wherever it landed."""
    async with beacons(redis_server.url) as (one, two), clients(one, two, one) as (a, b, c):
        token = await announced(a, one)
        b.announce(add=[token])
        await b.expect(wire.Introduction)
        await a.expect(wire.Introduction)
        c.announce(add=[token])  # c on a's machine: met locally
        assert {(await a.expect(wire.Introduction)).instance, (await b.expect(wire.Introduction)).instance} == {
            c.instance
        }
        await c.expect(wire.Introduction)
        await c.expect(wire.Introduction)
        mapped = (wire.Address("198.51.100.7", 4242),)
        a.announce(candidates=mapped)
        for other in (b, c):
            update = await other.expect(wire.Introduction)
            assert (update.instance, update.token, update.candidates) == (a.instance, token, mapped)
        a.announce(candidates=mapped)  # the same again: nobody hears of it
        await b.expect_nothing(0.3)
        await c.expect_nothing(0.1)


async def test_nat_mappings_cross_machines_in_introductions(redis_server):
    """What each peer learned of its NAT (the behaviour port) reaches the other, wherever each
    landed: from Redis (the announcer learns of the holder) and in the published introduction."""
    async with beacons(redis_server.url) as (one, two), clients(one, two) as (a, b):
        token = os.urandom(32)
        a.send(wire.Announce(add=(token,), mapping=wire.MAPPING_DEPENDENT))
        await wait_for(lambda: one.store.holders(token))
        b.send(wire.Announce(add=(token,), mapping=wire.MAPPING_INDEPENDENT))
        to_b = await b.expect(wire.Introduction)
        to_a = await a.expect(wire.Introduction)
        assert (to_b.instance, to_b.mapping) == (a.instance, wire.MAPPING_DEPENDENT)
        assert (to_a.instance, to_a.mapping) == (b.instance, wire.MAPPING_INDEPENDENT)


async def test_token_bounds_are_global(redis_server):
    # 2 places per token; every client comes from 127.0.0.1, so the third is refused wherever it lands
    async with beacons(redis_server.url, max_peers_per_token=2) as (one, two), clients(one, two, two) as (a, b, c):
        token = await announced(a, one)
        b.announce(add=[token])
        await b.expect(wire.Introduction)
        await a.expect(wire.Introduction)
        c.announce(add=[token])
        refusal = await c.expect(wire.Error)
        assert refusal.code == ErrorCode.TOKEN_FULL
        assert wire.token_of_full_message(refusal.message) == token
        await a.expect_nothing(0.2)


async def test_withdraw_and_leave_are_seen_everywhere(redis_server):
    async with beacons(redis_server.url) as (one, two), clients(one, two, two) as (a, b, c):
        token = await announced(a, one)
        a.announce(withdraw=[token])
        await wait_for(lambda: not one.store.holders(token))
        await asyncio.sleep(0.1)
        b.announce(add=[token])
        await b.expect_nothing(0.3)  # a withdrew: nobody to meet
        await a.close()
        c.announce(add=[token])
        assert (await c.expect(wire.Introduction)).instance == b.instance
        await b.expect(wire.Introduction)


async def test_unreachable_store_is_one_line_naming_the_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    server = BeaconServer(loopback_config(store=url), create_bundle())
    with pytest.raises(StoreUnavailable) as info:
        await server.start()
    assert url in str(info.value) and "\n" not in str(info.value)


async def test_redis_restart_local_peers_still_meet_then_everyone_again(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        async with beacons(redis.url) as (one, two), clients(one, one, two) as (a, b, c):
            token = await announced(a, one)
            redis.stop()
            b.announce(add=[token])  # Redis gone: the worker holding both still introduces them
            assert (await b.expect(wire.Introduction, timeout=5)).instance == a.instance
            assert (await a.expect(wire.Introduction)).instance == b.instance
            store = one.store
            assert isinstance(store, RedisStore)
            await wait_for(lambda: not store.connected)
            assert store.snapshot()["beacon_store_connected"] == 0
            assert store.snapshot()["beacon_store_failures"] >= 1
            redis.start()  # same port, empty: both beacons publish their peers again
            await wait_for(lambda: one.store.connected and two.store.connected, timeout=15)
            c.announce(add=[token])
            got = await introductions(c, 1.0)
            assert sorted(i.instance for i in got) == sorted([a.instance, b.instance])
            # a and b each meet c once, and are not introduced to each other a second time
            assert [i.instance for i in await introductions(a)] == [c.instance]
            assert [i.instance for i in await introductions(b)] == [c.instance]
    finally:
        redis.stop()


async def test_a_dead_beacons_entries_expire_by_themselves(redis_server):
    async with beacons(redis_server.url) as (one, two), clients(one, two) as (a, c):
        token = await announced(a, one)
        await asyncio.sleep(0.2)
        # one's process "dies": no removal, no more refreshes (its tasks stop, its socket closes)
        store = one.store
        for task in store._tasks:
            task.cancel()
        await asyncio.sleep(0)
        store._connected = False
        store._local.clear()
        await store._close_client()
        await asyncio.sleep(3.5)  # store_ttl_seconds = 3
        c.announce(add=[token])
        await c.expect_nothing(0.5)


async def test_start_degraded_then_join_when_redis_appears(tmp_path):
    port = free_port()
    redis = RedisServer(tmp_path / "redis", port=port)
    url = redis.url
    try:
        async with beacons(url, count=1, store_start_degraded=True) as (one,):
            assert one.store.snapshot()["beacon_store_connected"] == 0
            async with clients(one, one) as (a, b):
                token = os.urandom(32)
                a.announce(add=[token])
                b.announce(add=[token])  # met locally while Redis is away
                assert (await b.expect(wire.Introduction)).instance == a.instance
                assert (await a.expect(wire.Introduction)).instance == b.instance
                redis.start()
                await wait_for(lambda: one.store.connected, timeout=15)
                async with beacons(url, count=1) as (two,), clients(two) as (c,):
                    c.announce(add=[token])  # a and b were published when Redis came
                    got = await introductions(c, 1.0)
                    assert sorted(i.instance for i in got) == sorted([a.instance, b.instance])
                    assert [i.instance for i in await introductions(a)] == [c.instance]
    finally:
        redis.stop()


async def test_store_password(tmp_path):
    with RedisServer(tmp_path / "redis", password="s3cret") as redis:
        server = BeaconServer(loopback_config(store=redis.url), create_bundle())
        with pytest.raises(StoreUnavailable) as info:
            await server.start()  # no password: refused, one line naming the URL
        assert redis.url in str(info.value) and "\n" not in str(info.value)
        async with beacons(redis.url, store_password="s3cret") as (one, two), clients(one, two) as (a, b):
            token = await announced(a, one)
            b.announce(add=[token])
            assert (await b.expect(wire.Introduction)).instance == a.instance
