"""Birthday probing: the plan (hypothesis) and the extra sockets / sprayer on loopback."""

from __future__ import annotations

import asyncio
import random
import socket
import time

from hypothesis import given
from hypothesis import strategies as st

from discretpeer import birthday
from discretpeer.birthday_io import ExtraSockets, spray


@given(st.integers(0, 5000), st.floats(0.05, 10), st.floats(0.005, 0.5))
def test_batches_spread_every_probe_over_the_time(count: int, seconds: float, tick: float) -> None:
    plan = birthday.batches(count, seconds, tick)
    assert sum(plan) == count and max(plan) - min(plan) <= 1


@given(st.integers(0, 2000), st.integers(0, 2**32), st.frozensets(st.integers(0, 70000), max_size=50))
def test_random_ports_are_distinct_in_range_and_avoid(count: int, seed: int, avoid: frozenset[int]) -> None:
    ports = birthday.random_ports(random.Random(seed), count, avoid)
    assert len(ports) == count == len(set(ports))
    assert all(1024 <= p <= 65535 and p not in avoid for p in ports)


def test_roles() -> None:
    assert birthday.role(True, False) == "sockets" and birthday.role(False, True) == "spray"
    assert birthday.role(True, True) is None and birthday.role(False, False) is None
    assert birthday.role(None, True) is None and birthday.role(True, None) is None


def test_a_thousand_probes_hit_256_mappings_most_of_the_time() -> None:
    """The arithmetic of the plan: ≥ 90 % per attempt (≈ 98 % by the formula)."""
    rng = random.Random(7)
    hits = 0
    for _ in range(300):
        open_ports = set(rng.sample(range(1024, 65536), birthday.SOCKETS))
        hits += any(p in open_ports for p in birthday.random_ports(rng))
    assert hits / 300 >= 0.95


async def test_extra_sockets_win_on_a_verified_probe_and_close_the_rest() -> None:
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.setblocking(False)
    delivered: list[tuple[bytes, tuple[str, int]]] = []
    extra = ExtraSockets(
        target.getsockname(),
        build_probe=lambda: b"ping",
        verify=lambda d: d == b"good",
        deliver=lambda d, a: delivered.append((d, a)),
        count=16,
    )
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(extra.run(seconds=2.0))
    sources = set()
    while len(sources) < 16:  # every socket probes once at the start
        data, source = await asyncio.wait_for(loop.sock_recvfrom(target, 100), 2)
        assert data == b"ping"
        sources.add(source)
    victim, other = sorted(sources)[:2]
    target.sendto(b"bad", victim)  # fails verification: no hit
    target.sendto(b"good", other)  # the hit
    assert await asyncio.wait_for(task, 3) is True
    assert extra.winner is not None and extra.winner.transport.get_extra_info("sockname")[1] == other[1]
    assert delivered == [(b"good", target.getsockname())]
    extra.send(b"through the winner")
    data, source = await asyncio.wait_for(loop.sock_recvfrom(target, 100), 2)
    assert (data, source) == (b"through the winner", other)
    # the losers are closed: nothing listens on their ports any more
    closed = [s for s in sources if s != other]
    await asyncio.sleep(0.01)
    assert all(not _port_in_use(port) for _, port in closed)
    extra.close()
    await asyncio.sleep(0.01)  # asyncio closes transports on the next loop turn
    assert not _port_in_use(other[1])
    target.close()


async def test_without_a_hit_every_socket_closes_when_the_attempt_ends() -> None:
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    extra = ExtraSockets(
        target.getsockname(), build_probe=lambda: b"p", verify=lambda d: True, deliver=lambda d, a: None, count=8
    )
    started = time.monotonic()
    assert await extra.run(seconds=0.3) is False
    assert time.monotonic() - started < 1.5 and extra.closed and extra.winner is None
    assert extra.packets_sent >= 8
    target.close()


async def test_spray_is_paced_and_bounded() -> None:
    sent: list[tuple[str, int]] = []
    started = time.monotonic()
    count = await spray(
        "127.0.0.1", lambda data, addr: sent.append(addr), lambda: b"p", stop=lambda: False, count=200, seconds=0.5
    )
    elapsed = time.monotonic() - started
    assert count == len(sent) == 200 and len(set(sent)) == 200
    assert 0.45 <= elapsed < 1.0  # spread over the time, not a burst, and not late
    stopped = await spray("127.0.0.1", lambda d, a: None, lambda: b"p", stop=lambda: True, count=200, seconds=0.5)
    assert stopped == 0


def _port_in_use(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("0.0.0.0", port))
        return False
    except OSError:
        return True
    finally:
        probe.close()
