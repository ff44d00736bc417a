"""``workers = N``: real processes sharing one UDP port, steered by connection ID, on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import urllib.request

import pytest

from beacon.workers import steering_program
from discretpeer.proto import wire
from tests.scaleout.processes import BeaconProcess, RebindingNat

BeaconClient = __import__("beacon_test_client").BeaconClient

pytestmark = pytest.mark.slow


def worker_of(client) -> int:
    """The worker holding this connection: the first byte of the connection ID it chose."""
    return client.protocol._quic._peer_cid.cid[0]


async def clients_on_each_worker(beacon: BeaconProcess, workers: int, tries: int = 40):
    by_worker: dict[int, object] = {}
    spare = []
    for _ in range(tries):
        client = await BeaconClient.connect(beacon.address, beacon.fingerprint)
        index = worker_of(client)
        if index in by_worker:
            spare.append(client)
        else:
            by_worker[index] = client
        if len(by_worker) == workers:
            break
    for client in spare:
        await client.close()
    assert sorted(by_worker) == list(range(workers)), f"connections reached workers {sorted(by_worker)}"
    return [by_worker[i] for i in range(workers)]


async def meet(a, b) -> bytes:
    """A announces a fresh token, then B (on another worker): each is introduced to the other.
    Returns the token."""
    token = os.urandom(32)
    a.announce(add=[token])
    await asyncio.sleep(0.2)
    b.announce(add=[token])
    assert (await b.expect(wire.Introduction)).instance == a.instance
    assert (await a.expect(wire.Introduction)).instance == b.instance
    return token


async def test_workers_share_the_tls_tcp_port_too(redis_server, tmp_path):
    """Every worker serves TLS/TCP on the beacon's port number (SO_REUSEPORT, as UDP): before,
    the second worker could not bind it and, with a fixed port, died at every restart."""
    from discretpeer.beacon_tcp import open_channel

    with contextlib.closing(__import__("socket").socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    beacon = BeaconProcess(
        tmp_path / "beacon", {"store": redis_server.url, "workers": 2, "store_ttl_seconds": 3}, "--port", str(port)
    ).start()
    try:
        pids = beacon.worker_pids
        assert beacon.facts["tcp_addresses"] == [f"127.0.0.1:{port}"]
        for _ in range(6):  # the kernel spreads TCP connections over the workers' listeners
            channel = await open_channel("127.0.0.1", port, beacon.fingerprint)
            try:
                channel.send(wire.Hello(version=wire.PROTOCOL_VERSION, instance=os.urandom(wire.INSTANCE_SIZE)))
                items = await asyncio.wait_for(channel.receive(), 5)
                assert isinstance(items[0], wire.Welcome), items
            finally:
                channel.close()
        await asyncio.sleep(1.0)
        assert beacon.worker_pids == pids, "a worker died and was restarted"
    finally:
        assert beacon.stop() == 0
    assert "Traceback" not in beacon.stderr


def two_worker_beacon(directory, store_url: str) -> BeaconProcess:
    """A started beacon of two workers sharing ``store_url``, with metrics."""
    settings = {"store": store_url, "workers": 2, "store_ttl_seconds": 3}
    return BeaconProcess(directory, settings, "--port", "0", "--metrics-port", "0").start()


@pytest.fixture
def two_workers(redis_server, tmp_path):
    beacon = two_worker_beacon(tmp_path / "beacon", redis_server.url)
    yield beacon
    assert beacon.stop() == 0
    assert "Traceback" not in beacon.stderr


def test_steering_program_is_six_instructions():
    program = steering_program(4)
    assert len(program) == 6 * 8
    assert program[8 * 3 + 4 : 8 * 3 + 8] == (4).to_bytes(4, "little")  # jge #workers


async def test_peers_on_two_workers_meet_and_metrics_are_labelled(two_workers):
    a, b = await clients_on_each_worker(two_workers, 2)
    try:
        await meet(a, b)
        text = urllib.request.urlopen(two_workers.facts["metrics"], timeout=5).read().decode()
        assert 'beacon_introductions_total{worker="0"} 1.0' in text
        assert 'beacon_introductions_total{worker="1"} 1.0' in text
        # SIGHUP is forwarded to the workers, which carry on (nothing restarted, still serving)
        os.kill(two_workers.process.pid, signal.SIGHUP)
        await asyncio.sleep(0.5)
        a.send(wire.Ping(nonce=7))
        b.send(wire.Ping(nonce=8))
        assert (await a.expect(wire.Pong)).nonce == 7
        assert (await b.expect(wire.Pong)).nonce == 8
        assert all(os.path.exists(f"/proc/{pid}") for pid in two_workers.worker_pids())
    finally:
        await a.close()
        await b.close()


async def test_a_client_whose_nat_rebinds_keeps_its_worker(two_workers):
    """Each rebinding changes the 4-tuple: without steering by connection ID every one of them
    would have a 1 in 2 chance of reaching the wrong worker (which drops the packet)."""
    nat = await RebindingNat.open(two_workers.address)
    client = await BeaconClient.connect(nat.address, two_workers.fingerprint)
    try:
        ports = {nat.outside_port}
        for nonce in range(10):
            await nat.rebind()
            ports.add(nat.outside_port)
            client.send(wire.Ping(nonce=nonce))
            pong = await client.expect(wire.Pong, timeout=3)
            assert pong.nonce == nonce
        assert len(ports) == 11
    finally:
        await client.close()
        nat.close()


async def test_a_killed_worker_is_restarted_and_its_peers_meet_again(two_workers):
    a, b = await clients_on_each_worker(two_workers, 2)
    token = os.urandom(32)
    a.announce(add=[token])
    await asyncio.sleep(0.2)
    b.announce(add=[token])
    assert (await a.expect(wire.Introduction)).instance == b.instance
    killed = two_workers.worker_pids()[1]
    os.kill(killed, signal.SIGKILL)  # b's entries stay in Redis: nobody removed them
    await b.close()
    # b's process reconnects (as a peer does, forever) until it lands on the restarted worker 1
    deadline = time.monotonic() + 20
    again = None
    while again is None:
        assert time.monotonic() < deadline, "worker 1 did not come back"
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            candidate = await BeaconClient.connect(two_workers.address, two_workers.fingerprint, timeout=1.0)
            if worker_of(candidate) == 1:
                again = candidate
            else:
                await candidate.close()
        await asyncio.sleep(0.05)
    try:
        again.announce(add=[token])
        assert (await again.expect(wire.Introduction)).instance == a.instance
        assert (await a.expect(wire.Introduction)).instance == again.instance
        # the restarted worker removed what the killed one left: nobody meets the dead b
        await again.expect_nothing(0.3)
    finally:
        await a.close()
        await again.close()


async def test_two_workers_survive_a_redis_restart(tmp_path):
    from tests.scaleout.redis_server import RedisServer

    redis = RedisServer(tmp_path / "redis").start()
    beacon = two_worker_beacon(tmp_path / "beacon", redis.url)

    def connected() -> list[str]:
        text = urllib.request.urlopen(beacon.facts["metrics"], timeout=5).read().decode()
        return [line for line in text.splitlines() if line.startswith("beacon_store_connected{")]

    try:
        a, b = await clients_on_each_worker(beacon, 2)
        try:
            token = await meet(a, b)
            redis.stop()
            deadline = time.monotonic() + 15
            while not all(line.endswith(" 0.0") for line in connected()):
                assert time.monotonic() < deadline, connected()
                await asyncio.sleep(0.2)
            redis.start()  # empty: the workers publish their peers again
            while not all(line.endswith(" 1.0") for line in connected()):
                assert time.monotonic() < deadline + 15, connected()
                await asyncio.sleep(0.2)
            c = await BeaconClient.connect(beacon.address, beacon.fingerprint)
            try:
                c.announce(add=[token])
                got = {(await c.expect(wire.Introduction)).instance for _ in range(2)}
                assert got == {a.instance, b.instance}
                # a and b meet c, and are not introduced to each other again
                assert (await a.expect(wire.Introduction)).instance == c.instance
                assert (await b.expect(wire.Introduction)).instance == c.instance
                await a.expect_nothing(0.3)
                await b.expect_nothing(0.1)
            finally:
                await c.close()
        finally:
            await a.close()
            await b.close()
    finally:
        assert beacon.stop() == 0
        redis.stop()
    assert "Traceback" not in beacon.stderr
    assert "store_lost" in beacon.stderr


async def test_every_worker_answers_on_the_shared_behaviour_port(redis_server, tmp_path):
    """With a fixed port the workers share port + 1 (SO_REUSEPORT) for NAT-behaviour requests:
    each worker's Welcome names it, the supervisor prints it among the ports to open, and a
    request to it is answered (whichever worker the kernel picks: the answer is stateless)."""
    from discretpeer import behaviour
    from tests.beacon.test_behaviour_port import free_port_pair

    port = free_port_pair()
    beacon = BeaconProcess(
        tmp_path / "beacon", {"store": redis_server.url, "workers": 2, "store_ttl_seconds": 3}, "--port", str(port)
    ).start()
    try:
        assert beacon.facts["behaviour_address"] == f"127.0.0.1:{port + 1}"
        a, b = await clients_on_each_worker(beacon, 2)
        try:
            assert a.welcome.behaviour_port == b.welcome.behaviour_port == port + 1
        finally:
            await a.close()
            await b.close()
        loop = asyncio.get_running_loop()
        for _ in range(4):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)
                nonce = os.urandom(behaviour.NONCE_SIZE)
                sock.sendto(behaviour.request(nonce), ("127.0.0.1", port + 1))
                answer = await asyncio.wait_for(loop.sock_recv(sock, 2048), 3)
                assert behaviour.parse_answer(answer) == (nonce, sock.getsockname())
    finally:
        assert beacon.stop() == 0
    assert "Traceback" not in beacon.stderr
